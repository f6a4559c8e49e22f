"""The ledger a :class:`~shared_scorer.budget.Budget` keeps its money in: the protocol and the in-memory one.

A ledger knows nothing of limits or periods. It keeps, per *bucket key* (``"tenant=acme/day=2026-05-09"``),
the money spent and the money held by open reservations, and it answers one atomic question: "hold
``amount`` on every one of these buckets if none of them would go over its limit". Holds expire after a
time to live, so a worker killed mid-call does not keep its money held forever. A ledger also keeps the
*records*: one row per stage call (and per cache hit), which ``frugal report`` aggregates.

Money inside a ledger is an integer count of nano-dollars (``1 USD = 10**9``): exact, and small enough
for Redis' Lua numbers. Amounts are rounded *up* to the next nano-dollar, so the accounting never
under-counts; records keep each cost's exact ``Decimal`` as a string.

Backends: :class:`MemoryLedger` (one process), :class:`~shared_scorer.budget.sqlite_ledger.SQLiteLedger`
(durable, several processes on one machine) and :class:`~shared_scorer.budget.redis_ledger.RedisLedger`
(shared by every replica). :func:`~shared_scorer.budget.urls.open_ledger` opens one from a URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol, runtime_checkable

from shared_scorer.errors import DataError

NANO_PER_USD = 10**9
MAX_NANO = 2**53
"""The largest amount a ledger counts exactly (about 9 million USD): Redis' Lua numbers are doubles."""


def to_nano(usd: Decimal) -> int:
    """USD as whole nano-dollars, rounded up (the accounting never under-counts)."""
    return int((Decimal(usd) * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def from_nano(nano: int) -> Decimal:
    """Nano-dollars back to exact USD."""
    return Decimal(nano) / NANO_PER_USD


@dataclass(frozen=True)
class Charge:
    """One bucket a reservation must fit in: its key and its limit in nano-dollars."""

    key: str
    limit_nano: int


@dataclass(frozen=True)
class Denial:
    """Why a reservation was refused: the first charge that did not fit, with that bucket's figures."""

    index: int
    """Position of the refused :class:`Charge` in the list given to ``reserve``."""
    spent_nano: int
    held_nano: int


@dataclass(frozen=True)
class SpendRecord:
    """One stage call (or one cache hit) as stored in a ledger's records; ``frugal report`` reads these.

    ``stage`` is ``-1`` for a cache hit. ``all_last_usd`` (the estimated cost had only the last stage been
    called) and ``answered`` are set on one row per request, the row of the stage that answered.
    """

    ts: float
    day: str
    request: str
    tenant: str
    user: str
    model: str
    stage: int
    status: str
    cost_usd: Decimal
    input_tokens: int = 0
    output_tokens: int = 0
    escalated: bool = False
    """This stage was called and the query then moved on to a later stage."""
    answered: bool = False
    cache_hit: bool = False
    saved_usd: Decimal = Decimal(0)
    all_last_usd: Decimal = Decimal(0)
    failed: bool = False
    """The request this stage belonged to ended without an answer."""

    def as_strings(self) -> dict[str, str]:
        """Every field as text (money as exact decimal strings, booleans as ``"0"``/``"1"``)."""
        out: dict[str, str] = {}
        for name, value in asdict(self).items():
            out[name] = str(int(value)) if isinstance(value, bool) else repr(value) if name == "ts" else str(value)
        return out

    @classmethod
    def from_strings(cls, row: Mapping[str, Any], where: str = "ledger record") -> SpendRecord:
        """Parse what :meth:`as_strings` wrote (``where`` names the source in errors)."""

        def text(name: str) -> str:
            value = row.get(name)
            if value is None:
                raise DataError(f"{where}: field {name!r} is missing")
            return value.decode() if isinstance(value, bytes) else str(value)

        try:
            return cls(
                ts=float(text("ts")),
                day=text("day"),
                request=text("request"),
                tenant=text("tenant"),
                user=text("user"),
                model=text("model"),
                stage=int(text("stage")),
                status=text("status"),
                cost_usd=Decimal(text("cost_usd")),
                input_tokens=int(text("input_tokens")),
                output_tokens=int(text("output_tokens")),
                escalated=text("escalated") in ("1", "True"),
                answered=text("answered") in ("1", "True"),
                cache_hit=text("cache_hit") in ("1", "True"),
                saved_usd=Decimal(text("saved_usd")),
                all_last_usd=Decimal(text("all_last_usd")),
                failed=text("failed") in ("1", "True"),
            )
        except (ValueError, ArithmeticError) as exc:
            raise DataError(f"{where}: malformed record {dict(row)!r}: {exc}") from None


RECORD_FIELDS: tuple[str, ...] = tuple(SpendRecord.__dataclass_fields__)


@runtime_checkable
class Ledger(Protocol):
    """Where a budget keeps money: atomic check-and-hold, settle, figures, records."""

    def reserve(self, rid: str, charges: Sequence[Charge], amount_nano: int, ttl_s: float) -> Denial | None:
        """Atomically: release expired holds; if ``spent + held + amount <= limit`` for every charge, hold
        ``amount`` on each under ``rid`` for ``ttl_s`` seconds and return ``None``; else hold nothing and
        return the :class:`Denial` of the first charge that does not fit."""
        ...

    def settle(self, rid: str, keys: Sequence[str], actual_nano: int) -> None:
        """Release ``rid``'s hold (if it has not expired) and add ``actual_nano`` to each key's spend."""
        ...

    def figures(self, key: str) -> tuple[int, int]:
        """``(spent_nano, held_nano)`` of one bucket, after releasing expired holds."""
        ...

    def record(self, rows: Iterable[SpendRecord]) -> None:
        """Append records."""
        ...

    def records(self, since: float | None = None) -> list[SpendRecord]:
        """Every record (with ``ts >= since`` when given), oldest first."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass
class _Hold:
    keys: tuple[str, ...]
    amount: int
    expires: float


@dataclass
class _MemoryState:
    spent: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    rows: list[SpendRecord] = field(default_factory=list)


class MemoryLedger:
    """A ledger in this process's memory (thread-safe); for tests and single-process services.

    >>> ledger = MemoryLedger()
    >>> ledger.reserve("r1", [Charge("overall/all", 100)], 60, ttl_s=30)
    >>> ledger.reserve("r2", [Charge("overall/all", 100)], 60, ttl_s=30)
    Denial(index=0, spent_nano=0, held_nano=60)
    >>> ledger.settle("r1", ["overall/all"], 25)
    >>> ledger.figures("overall/all")
    (25, 0)
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _MemoryState()

    def _release_expired(self) -> None:
        now = self._clock()
        state = self._state
        for rid in [rid for rid, hold in state.holds.items() if hold.expires <= now]:
            self._release(rid)

    def _release(self, rid: str) -> None:
        hold = self._state.holds.pop(rid, None)
        if hold is not None:
            for key in hold.keys:
                self._state.held[key] -= hold.amount

    def reserve(self, rid: str, charges: Sequence[Charge], amount_nano: int, ttl_s: float) -> Denial | None:
        with self._lock:
            self._release_expired()
            state = self._state
            for i, charge in enumerate(charges):
                spent, held = state.spent.get(charge.key, 0), state.held.get(charge.key, 0)
                if spent + held + amount_nano > charge.limit_nano:
                    return Denial(i, spent, held)
            for charge in charges:
                state.held[charge.key] = state.held.get(charge.key, 0) + amount_nano
            state.holds[rid] = _Hold(tuple(c.key for c in charges), amount_nano, self._clock() + ttl_s)
            return None

    def settle(self, rid: str, keys: Sequence[str], actual_nano: int) -> None:
        with self._lock:
            self._release(rid)
            for key in keys:
                self._state.spent[key] = self._state.spent.get(key, 0) + actual_nano

    def figures(self, key: str) -> tuple[int, int]:
        with self._lock:
            self._release_expired()
            return self._state.spent.get(key, 0), self._state.held.get(key, 0)

    def record(self, rows: Iterable[SpendRecord]) -> None:
        with self._lock:
            self._state.rows.extend(rows)

    def records(self, since: float | None = None) -> list[SpendRecord]:
        with self._lock:
            return [r for r in self._state.rows if since is None or r.ts >= since]

    def close(self) -> None:
        """Nothing to release."""


def sum_usd(values: Iterable[Decimal]) -> Decimal:
    """Exact sum of USD amounts."""
    return sum(values, Decimal(0))
