"""A throw-away ``redis-server`` on 127.0.0.1 for tests and benchmarks (no persistence, a temp folder)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from shared_scorer.errors import LedgerError


def redis_server_binary() -> str | None:
    """The path of ``redis-server`` (Debian package ``redis-server``), or ``None``."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(timeout_s: float = 10.0) -> Iterator[str]:
    """Start ``redis-server`` on a free port of 127.0.0.1; yield its URL; stop it on exit.

    Example::

        with redis_server() as url:
            ledger = RedisLedger(url)
    """
    binary = redis_server_binary()
    if binary is None:
        raise LedgerError("redis-server is not installed (Debian: apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="frugal-redis-") as folder:
        port = free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", folder, "--protected-mode", "yes", "--loglevel", "warning"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                    raise LedgerError(f"redis-server on 127.0.0.1:{port} did not start: {error.strip()}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
