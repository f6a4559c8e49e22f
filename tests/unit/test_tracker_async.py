"""On the event loop, a ledger-backed cost tracker writes from a worker thread, never from the loop itself."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest

from shared_scorer import Cascade, StageOutput
from shared_scorer.budget import LedgerCostTracker, open_ledger
from shared_scorer.errors import CascadeError


class _Spy:
    """Wraps a ledger's ``record`` and notes the thread each write ran on."""

    def __init__(self, ledger: object) -> None:
        self.threads: list[str] = []
        inner = ledger.record  # type: ignore[attr-defined]

        def record(rows: object) -> None:
            self.threads.append(threading.current_thread().name)
            inner(rows)

        ledger.record = record  # type: ignore[attr-defined]


def _cascade(tmp_path: Path) -> tuple[Cascade, _Spy, object]:
    ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    spy = _Spy(ledger)
    tracker = LedgerCostTracker(ledger)
    cascade = Cascade(["m"], [], lambda q, a: 1.0, prices={"m": (1, 1)}, tracker=tracker)
    return cascade, spy, ledger


async def test_arun_writes_the_ledger_off_the_event_loop(tmp_path: Path) -> None:
    cascade, spy, ledger = _cascade(tmp_path)

    async def call() -> StageOutput:
        return StageOutput("hello", 10, 5)

    await cascade.arun("hi", [call])
    assert spy.threads and threading.main_thread().name not in spy.threads
    assert [(r.model, r.cost_usd) for r in ledger.records()] == [("m", Decimal("0.000015"))]  # type: ignore[attr-defined]
    assert cascade.tracker.summary(decimals=True)["total_cost_usd"] == Decimal("0.000015")


async def test_a_failed_async_call_is_recorded_off_the_loop_too(tmp_path: Path) -> None:
    cascade, spy, _ = _cascade(tmp_path)

    async def call() -> StageOutput:
        raise RuntimeError("provider down")

    with pytest.raises(CascadeError):
        await cascade.arun("hi", [call])
    assert spy.threads and threading.main_thread().name not in spy.threads
    assert cascade.tracker.summary()["failed_calls"] == 1


def test_run_still_writes_in_the_calling_thread(tmp_path: Path) -> None:
    cascade, spy, _ = _cascade(tmp_path)
    cascade.run("hi", [lambda: StageOutput("hello", 10, 5)])
    assert spy.threads == [threading.current_thread().name]
