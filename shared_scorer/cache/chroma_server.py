"""A throw-away ``chroma run`` server on 127.0.0.1 for tests and benchmarks (a temp folder, stopped on exit).

The Chroma twin of :func:`shared_scorer.budget.redis_server.redis_server`: what ``frugal serve
--answer-cache http://HOST:PORT`` replicas share. Needs the ``chroma`` command of the ``chromadb`` package
(``pip install 'frugal-cascade[cache-server]'``).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from shared_scorer.budget.redis_server import free_port
from shared_scorer.errors import ConfigurationError


def chroma_binary() -> str | None:
    """The path of the ``chroma`` command (package ``chromadb``), or ``None``."""
    return shutil.which("chroma")


@contextlib.contextmanager
def chroma_server(timeout_s: float = 60.0) -> Iterator[str]:
    """Start ``chroma run`` on a free port of 127.0.0.1 with its data in a temp folder; yield its URL
    (``http://127.0.0.1:PORT``, what ``--answer-cache`` takes); stop it on exit.

    Example::

        with chroma_server() as url:
            cache = open_answer_cache(url)
    """
    binary = chroma_binary()
    if binary is None:
        raise ConfigurationError("the 'chroma' command is not installed (pip install 'frugal-cascade[cache-server]')")
    with tempfile.TemporaryDirectory(prefix="frugal-chroma-") as folder:
        port = free_port()
        log_path = Path(folder) / "server.log"
        with log_path.open("w") as log:
            args = [binary, "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(Path(folder) / "db")]
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + timeout_s
                while not _heartbeat(port):
                    if process.poll() is not None or time.monotonic() > deadline:
                        tail = log_path.read_text(errors="replace")[-500:].strip()
                        raise ConfigurationError(f"chroma run on 127.0.0.1:{port} did not start: {tail}")
                    time.sleep(0.2)
                yield f"http://127.0.0.1:{port}"
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _heartbeat(port: int) -> bool:
    """Whether the Chroma server on ``port`` answers its heartbeat (API v2, else v1)."""
    for path in ("/api/v2/heartbeat", "/api/v1/heartbeat"):
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as reply:
            if reply.status == 200:
                return True
    return False
