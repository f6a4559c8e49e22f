"""``LedgerCostTracker``: the cost tracker whose records go to a ledger, so every replica's spend is one query."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

from shared_scorer.budget.ledger import Ledger, MemoryLedger, SpendRecord
from shared_scorer.budget.urls import open_ledger
from shared_scorer.context import Scope
from shared_scorer.tracking import CostTracker

if TYPE_CHECKING:
    from shared_scorer.outcome import CascadeResult

log = logging.getLogger(__name__)


def records_of(result: CascadeResult, scope: Scope, *, ts: float, failed: bool = False) -> list[SpendRecord]:
    """One :class:`SpendRecord` per stage called or refused by the budget (one for a cache hit)."""
    day = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")
    request = uuid.uuid4().hex
    common = {"ts": ts, "day": day, "request": request, "tenant": scope.tenant, "user": scope.user, "failed": failed}
    hit = result.cache_hit
    if hit is not None:
        return [
            SpendRecord(
                **common,  # type: ignore[arg-type]
                model=hit.model,
                stage=-1,
                status="cache_hit",
                cost_usd=Decimal(0),
                answered=True,
                cache_hit=True,
                saved_usd=hit.saved_usd,
            )
        ]
    called = [a for a in result.attempts if a.called or a.status == "over_budget"]
    last_called = max((a.stage for a in result.attempts if a.called), default=-1)
    rows = []
    for attempt in called:
        answered = attempt.stage == result.answer_stage
        rows.append(
            SpendRecord(
                **common,  # type: ignore[arg-type]
                model=attempt.model,
                stage=attempt.stage,
                status=attempt.status,
                cost_usd=attempt.cost_usd,
                input_tokens=attempt.input_tokens,
                output_tokens=attempt.output_tokens,
                escalated=attempt.called and attempt.stage < last_called,
                answered=answered,
                all_last_usd=result.all_last_estimate_usd if answered else Decimal(0),
            )
        )
    return rows


class LedgerCostTracker(CostTracker):
    """A :class:`~shared_scorer.tracking.CostTracker` that also writes every call to a ledger's records.

    Pass it as ``cost_tracker=`` (LangChain), ``tracker=`` (``Cascade``): in-process totals work as before,
    and ``frugal report --ledger ...`` sees the spend of every process writing to the same ledger. A
    call's tenant and user come from its context (``result.context.scope``) unless ``scope_of`` is given.

    >>> from shared_scorer import Cascade, StageOutput
    >>> from shared_scorer.budget import MemoryLedger
    >>> ledger = MemoryLedger()
    >>> cascade = Cascade(["m"], [], lambda q, a: 1.0, prices={"m": (1, 1)}, tracker=LedgerCostTracker(ledger))
    >>> _ = cascade.run("hi", [lambda: StageOutput("hello", 10, 5)])
    >>> [(r.model, r.cost_usd) for r in ledger.records()]
    [('m', Decimal('0.000015'))]
    """

    def __init__(
        self,
        ledger: Ledger | str,
        *,
        scope_of: Callable[[CascadeResult], Scope | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = open_ledger(ledger)
        self._scope_of = scope_of
        self._clock = clock
        super().__init__()

    def _scope(self, result: CascadeResult) -> Scope:
        scope = self._scope_of(result) if self._scope_of is not None else None
        return scope if scope is not None else result.context.scope

    def _write(self, result: CascadeResult, failed: bool) -> None:
        try:
            self.ledger.record(records_of(result, self._scope(result), ts=self._clock(), failed=failed))
        except Exception:
            # The answer is already paid for; losing its record must not lose the answer too.
            log.warning("could not write a cascade call to the ledger %r", self.ledger, exc_info=True)

    def record(self, result: CascadeResult) -> None:
        super().record(result)
        self._write(result, failed=False)

    def record_failure(self, result: CascadeResult) -> None:
        super().record_failure(result)
        self._write(result, failed=True)

    async def arecord(self, result: CascadeResult) -> None:
        """:meth:`record` on the event loop: the ledger write (SQLite, Redis) runs in a worker thread."""
        super().record(result)
        await self._awrite(result, failed=False)

    async def arecord_failure(self, result: CascadeResult) -> None:
        """:meth:`record_failure` on the event loop, the ledger write in a worker thread."""
        super().record_failure(result)
        await self._awrite(result, failed=True)

    async def _awrite(self, result: CascadeResult, failed: bool) -> None:
        if isinstance(self.ledger, MemoryLedger):
            self._write(result, failed)
        else:
            await asyncio.to_thread(self._write, result, failed)
