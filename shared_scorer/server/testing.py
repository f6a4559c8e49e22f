"""Helpers for tests: a started replay server as a context manager, small records, and an ASGI app
(``frugal serve``'s gateway) served on 127.0.0.1 for the length of a ``with`` block.

In a ``conftest.py``::

    @pytest.fixture
    def server():
        with replay_server(records=[make_record("Capital of France?", "Paris.")]) as server:
            yield server
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from shared_scorer.fitting.data import Record
from shared_scorer.server.replay import ReplayServer
from shared_scorer.server.scenarios import Scenario


@contextmanager
def replay_server(
    records: Iterable[Record] | None = None,
    scenarios: Iterable[Mapping[str, Any] | Scenario] | None = None,
    **options: Any,
) -> Iterator[ReplayServer]:
    """A started :class:`ReplayServer` on a free port, stopped on exit; ``options`` go to its constructor."""
    with ReplayServer(records, scenarios=scenarios, **options) as server:
        yield server


def make_record(
    query: str,
    answer: str,
    *,
    model: str = "replay-model",
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    query_id: str | None = None,
    correct: float = 1.0,
    cost_usd: float = 0.0,
    reference: str | None = None,
    system: str | None = None,
    logprob: float | None = None,
) -> Record:
    """A :class:`Record` with defaults for the fields a replay test does not care about."""
    return Record(
        query_id=query_id if query_id is not None else "q-" + hashlib.sha256(query.encode()).hexdigest()[:10],
        query=query,
        model=model,
        answer=answer,
        correct=correct,
        cost_usd=cost_usd,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        reference=reference,
        system=system,
        logprob=logprob,
    )


@contextmanager
def serving(app: Any, *, start_timeout_s: float = 10.0) -> Iterator[str]:
    """``app`` (e.g. ``gateway.make_app(...)``) under uvicorn on a free port of 127.0.0.1, in a thread;
    yields its ``/v1`` base URL and stops the server on exit. Needs the ``serve`` extra."""
    import uvicorn

    from shared_scorer.budget.redis_server import free_port

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port} within {start_timeout_s} s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
