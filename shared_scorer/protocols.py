"""The hooks the cascade loop calls besides the stages: an answer cache, a budget and a cost recorder.

The loop (:mod:`shared_scorer.cascade`) asks the cache before the first stage and stores accepted answers;
it reserves each stage's worst-case cost with the budget before calling it and settles the reservation to
the real cost after; it hands every finished call to the cost recorder. Implementations live in
:mod:`shared_scorer.cache`, :mod:`shared_scorer.budget` and :mod:`shared_scorer.tracking`; anything with
these methods works. On the event loop the cascade uses the async twin of a hook
(:class:`AsyncAnswerCacheHook`, :class:`AsyncBudgetHook`) when the hook implements it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from shared_scorer.context import CallContext, Scope

if TYPE_CHECKING:
    from shared_scorer.outcome import CascadeResult

__all__ = [
    "AnswerCacheHook",
    "AsyncAnswerCacheHook",
    "AsyncBudgetHook",
    "AsyncCostRecorder",
    "BudgetHook",
    "CacheHit",
    "CostRecorder",
    "Reservation",
]


@dataclass(frozen=True)
class CacheHit:
    """A cached answer served instead of calling any stage."""

    entry_id: str
    answer: str
    similarity: float
    model: str
    """The stage model that originally wrote the answer."""
    saved_usd: Decimal
    """What the original answer cost: the money this hit saved."""


@runtime_checkable
class AnswerCacheHook(Protocol):
    """The two calls the cascade makes to an answer cache."""

    def lookup(self, query: str, context: CallContext) -> CacheHit | None: ...

    def store(
        self, query: str, answer: str, context: CallContext, *, model: str, score: float | None, cost_usd: Decimal
    ) -> None: ...


@dataclass(frozen=True)
class Reservation:
    """Money held for one stage call until it is settled to the real cost."""

    id: str
    amount: Decimal
    scope: Scope
    model: str


@runtime_checkable
class BudgetHook(Protocol):
    """The two calls the cascade makes to a budget: reserve before a stage, settle after."""

    def reserve(self, context: CallContext, model: str, amount: Decimal) -> Reservation:
        """Hold ``amount`` or raise :class:`BudgetExceeded` naming the limit."""
        ...

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Replace the held amount by the real cost (0 for a call that failed)."""
        ...


@runtime_checkable
class AsyncAnswerCacheHook(Protocol):
    """The async twin of :class:`AnswerCacheHook`, used on the event loop when a cache has it."""

    async def alookup(self, query: str, context: CallContext) -> CacheHit | None: ...

    async def astore(
        self, query: str, answer: str, context: CallContext, *, model: str, score: float | None, cost_usd: Decimal
    ) -> None: ...


@runtime_checkable
class AsyncBudgetHook(Protocol):
    """The async twin of :class:`BudgetHook`, used on the event loop when a budget has it."""

    async def areserve(self, context: CallContext, model: str, amount: Decimal) -> Reservation: ...

    async def asettle(self, reservation: Reservation, actual: Decimal) -> None: ...


@runtime_checkable
class CostRecorder(Protocol):
    """What the cascade tells its cost tracker: every finished call, failed ones included."""

    def record(self, result: CascadeResult) -> None: ...

    def record_failure(self, result: CascadeResult) -> None: ...


@runtime_checkable
class AsyncCostRecorder(Protocol):
    """The async twin of :class:`CostRecorder` (a tracker that writes to a database may implement it)."""

    async def arecord(self, result: CascadeResult) -> None: ...

    async def arecord_failure(self, result: CascadeResult) -> None: ...
