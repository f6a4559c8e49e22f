"""``frugal serve`` replicas as real processes, for tests and benchmarks.

:func:`serve_process` runs the ``frugal serve`` command (with ``--workers N``, or one process per call)
on a port of 127.0.0.1 until its ``/v1/models`` answers; :func:`tiny_strategy` saves a strategy with a
tiny random DistilBERT scorer next to it, so that the command loads a real checkpoint, as it would in
production. Replicas share a budget through ``--ledger redis://...`` and an answer cache through
``--answer-cache http://HOST:PORT`` (see :func:`shared_scorer.budget.redis_server.redis_server` and
:func:`shared_scorer.cache.chroma_server.chroma_server`)::

    with redis_server() as ledger, chroma_server() as cache:
        common = ["--strategy", str(path), "--keys", str(keys), "--stages-base-url", url,
                  "--ledger", ledger, "--answer-cache", cache]
        with serve_processes([[*common, "--workers", "2"], common], key="sk-acme") as (a, b):
            ...  # two replicas: a (two workers on one port) and b
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from shared_scorer.budget.redis_server import free_port
from shared_scorer.errors import ConfigurationError


def frugal_command() -> list[str]:
    """The ``frugal`` console script of this Python (or ``python -c`` calling its ``main``)."""
    script = Path(sys.executable).with_name("frugal")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from shared_scorer.cli import main; sys.exit(main())"]


@contextlib.contextmanager
def serve_process(
    args: Sequence[str],
    *,
    key: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log: IO[Any] | None = None,
    cwd: str | Path | None = None,
    start_timeout_s: float = 180.0,
) -> Iterator[str]:
    """Run ``frugal serve ARGS --host 127.0.0.1 --port PORT`` (a free port unless given) as a process;
    yield its ``/v1`` base URL once ``GET /v1/models`` answers 200 to ``key``; stop it on exit (SIGTERM,
    then SIGKILL to its process group after 15 s). Its output goes to ``log`` (default: discarded); a
    process that exits, or does not answer within ``start_timeout_s``, is a :class:`ConfigurationError`."""
    logs = [log] if log is not None else None
    with serve_processes([args], key=key, ports=[port], env=env, logs=logs, cwd=cwd,
                         start_timeout_s=start_timeout_s) as (base_url,):  # fmt: skip
        yield base_url


@contextlib.contextmanager
def serve_processes(
    arg_lists: Sequence[Sequence[str]],
    *,
    key: str,
    ports: Sequence[int | None] | None = None,
    env: Mapping[str, str] | None = None,
    logs: Sequence[IO[Any]] | None = None,
    cwd: str | Path | None = None,
    start_timeout_s: float = 180.0,
) -> Iterator[list[str]]:
    """:func:`serve_process` for several replicas at once (one ``frugal serve`` process per argument list,
    all started before any is waited for); yields their base URLs in order."""
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i, args in enumerate(arg_lists):
            port = (ports[i] if ports else None) or free_port()
            argv = [*frugal_command(), "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
            out: Any = logs[i] if logs else subprocess.DEVNULL
            process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            started.append((process, f"http://127.0.0.1:{port}/v1"))
        deadline = time.monotonic() + start_timeout_s
        for process, base_url in started:
            while not _answers(base_url, key):
                if process.poll() is not None:
                    raise ConfigurationError(f"frugal serve at {base_url} exited with status {process.returncode}")
                if time.monotonic() > deadline:
                    raise ConfigurationError(f"frugal serve at {base_url} did not answer within {start_timeout_s} s")
                time.sleep(0.25)
        yield [base_url for _, base_url in started]
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.terminate()
        for process, _ in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # the group this call started: its workers too
                process.wait()


def _answers(base_url: str, key: str) -> bool:
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def tiny_strategy(
    folder: str | Path,
    records: Sequence[Any],
    *,
    chain: Sequence[str],
    thresholds: Sequence[float],
    prices: Mapping[str, tuple[str, str]],
) -> Path:
    """Save ``folder/strategy.json`` for ``chain`` and ``thresholds`` with a tiny random DistilBERT scorer
    trained on ``records`` (one per chain model at least) in ``folder/scorer``; return the strategy's path.

    ``prices`` are ``{model: (input, output)}`` USD per million tokens, kept in the strategy (what
    ``frugal serve`` bills with). A threshold of 0.0 accepts every answer of its stage, whatever the
    random scorer says, so the costs of a test stay exact."""
    from shared_scorer.scoring.distilbert import DistilBertScorer
    from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

    folder = Path(folder)
    scorer = DistilBertScorer.train(
        list(records), backbone="tiny-random", epochs=1, batch_size=16, max_length=32, progress=False, num_threads=1
    )
    scorer.save(folder / "scorer")
    point = FrontierPoint(tuple(chain), tuple(thresholds), accuracy=1.0, cost=0.0)
    table = {m: {"input_per_mtok": p[0], "output_per_mtok": p[1]} for m, p in prices.items()}
    strategy = Strategy.from_frontier(Frontier([point]), scorer="scorer", data_fingerprint="0" * 64, prices=table)
    path = folder / "strategy.json"
    strategy.save(path)
    return path
