"""``Budget``: spending limits in USD per tenant, per user and overall, enforced before each stage call.

Admission control, not after-the-fact accounting: before a stage is called the cascade asks the budget
to *reserve* its worst-case cost (known input tokens, output up to ``max_tokens``); the reservation is
atomic in the ledger, so twenty replicas sharing one Redis ledger can never together hold more than the
limit. After the call the reservation is *settled* to the real cost. A reservation that is never settled
(a worker killed mid-call) is released when its ``reservation_ttl_s`` runs out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal
from urllib.parse import quote

from shared_scorer.budget.ledger import MAX_NANO, Charge, Ledger, MemoryLedger, from_nano, to_nano
from shared_scorer.budget.urls import open_ledger
from shared_scorer.context import CallContext, Scope
from shared_scorer.errors import BudgetExceeded, ConfigurationError
from shared_scorer.protocols import Reservation

Period = Literal["hour", "day", "month"]
LimitScope = Literal["tenant", "user", "overall"]

_ADJECTIVE = {"hour": "hourly", "day": "daily", "month": "monthly", None: "total"}
_BUCKET_FORMAT = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d", "month": "%Y-%m"}


def usd_text(amount: Decimal) -> str:
    """``$50.00``, ``$0.05``, ``$0.000125``: at least cents, more digits when the amount has them."""
    text = f"{amount:.2f}"
    if Decimal(text) != amount:
        text = format(amount.normalize(), "f")
    return "$" + text


@dataclass(frozen=True)
class Limit:
    """A spending limit in USD over a period (``"hour"``, ``"day"``, ``"month"`` in UTC, or ``None``).

    ``scope="tenant"`` limits each tenant separately (or only ``tenant`` when given); ``"user"`` limits each
    user of each tenant (narrowed by ``tenant`` / ``user``); ``"overall"`` limits everyone together. A
    limit naming a tenant (or user) replaces the general limit of the same scope and period for it.

    >>> Limit("tenant", "50", period="day").describe(Scope("acme", "ann"))
    "tenant 'acme' daily limit $50.00"
    """

    scope: LimitScope
    usd: Decimal
    period: Period | None = "day"
    tenant: str | None = None
    user: str | None = None

    def __init__(
        self,
        scope: LimitScope,
        usd: Decimal | str | int,
        period: Period | None = "day",
        *,
        tenant: str | None = None,
        user: str | None = None,
    ) -> None:
        if scope not in ("tenant", "user", "overall"):
            raise ConfigurationError(f"Limit scope must be 'tenant', 'user' or 'overall', got {scope!r}")
        if period not in ("hour", "day", "month", None):
            raise ConfigurationError(f"Limit period must be 'hour', 'day', 'month' or None, got {period!r}")
        if isinstance(usd, float | bool):
            raise ConfigurationError(f"Limit usd must be a Decimal, str or int (not a float), got {usd!r}")
        try:
            amount = Decimal(usd)
        except ArithmeticError:
            raise ConfigurationError(f"Limit usd must be a number of USD, got {usd!r}") from None
        if not amount.is_finite() or amount < 0 or to_nano(amount) > MAX_NANO:
            raise ConfigurationError(f"Limit usd must be between 0 and {from_nano(MAX_NANO)}, got {usd!r}")
        if scope == "overall" and (tenant or user):
            raise ConfigurationError("an 'overall' limit cannot name a tenant or user")
        if scope == "tenant" and user:
            raise ConfigurationError("a 'tenant' limit cannot name a user; use scope='user'")
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "usd", amount)
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "tenant", tenant)
        object.__setattr__(self, "user", user)

    def applies_to(self, scope: Scope) -> bool:
        """Whether calls of ``scope`` count against this limit."""
        return (self.tenant is None or self.tenant == scope.tenant) and (self.user is None or self.user == scope.user)

    @property
    def specificity(self) -> int:
        return (self.tenant is not None) + (self.user is not None)

    def describe(self, scope: Scope) -> str:
        """The limit as a user reads it, e.g. ``tenant 'acme' daily limit $50.00``."""
        who = {
            "overall": "overall",
            "tenant": f"tenant {scope.tenant!r}",
            "user": f"user {scope.user!r} of tenant {scope.tenant!r}",
        }[self.scope]
        return f"{who} {_ADJECTIVE[self.period]} limit {usd_text(self.usd)}"

    def bucket(self, scope: Scope, when: float) -> str:
        """The ledger key this limit's spend for ``scope`` at time ``when`` is counted under."""
        parts = []
        if self.scope in ("tenant", "user"):
            parts.append("tenant=" + quote(scope.tenant, safe=""))
        if self.scope == "user":
            parts.append("user=" + quote(scope.user, safe=""))
        if self.period is None:
            parts.append("all")
        else:
            stamp = datetime.fromtimestamp(when, timezone.utc).strftime(_BUCKET_FORMAT[self.period])
            parts.append(f"{self.period}={stamp}")
        return f"{self.scope}:" + "/".join(parts)


@dataclass(frozen=True)
class BudgetReservation(Reservation):
    """A :class:`~shared_scorer.protocols.Reservation` that remembers the ledger buckets it holds money in."""

    keys: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitStatus:
    """One limit's figures for one scope right now."""

    limit: str
    key: str
    usd: Decimal
    spent_usd: Decimal
    held_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return max(Decimal(0), self.usd - self.spent_usd - self.held_usd)


def _check_amount(amount: Decimal, name: str, model: str) -> None:
    """A reservation or cost is a finite, non-negative ``Decimal``: a negative one would let a call through
    a limit it crosses (or credit the ledger)."""
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
        raise ConfigurationError(
            f"budget {name} for model {model!r} must be a finite, non-negative Decimal of USD, got {amount!r}"
        )


class Budget:
    """Spending limits enforced by reserving each stage's worst case in a shared :class:`Ledger`.

    Give it to ``FrugalChatModel(budget=...)``, ``FrugalLLM(budget=...)`` or ``Cascade(budget=...)``; one
    budget may be shared by several models. ``ledger`` is a ledger or a URL (see
    :func:`~shared_scorer.budget.urls.open_ledger`).

    >>> from shared_scorer.context import CallContext, Scope
    >>> budget = Budget("memory:", [Limit("tenant", "0.10", period="day")])
    >>> acme = CallContext(Scope("acme", "ann"))
    >>> held = budget.reserve(acme, "gpt-4o", Decimal("0.08"))
    >>> budget.settle(held, Decimal("0.03"))
    >>> budget.status(Scope("acme"))[0].spent_usd
    Decimal('0.03')
    >>> budget.reserve(acme, "gpt-4o", Decimal("0.08"))
    Traceback (most recent call last):
    ...
    shared_scorer.errors.BudgetExceeded: tenant 'acme' daily limit $0.10: spent $0.03 + held $0.00, this stage (gpt-4o) needs up to $0.08
    """  # noqa: E501

    def __init__(
        self,
        ledger: Ledger | str,
        limits: Sequence[Limit],
        *,
        reservation_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger: Ledger = open_ledger(ledger)
        self.limits = list(limits)
        for i, limit in enumerate(self.limits):
            if not isinstance(limit, Limit):
                raise ConfigurationError(f"limits[{i}] must be a Limit, got {type(limit).__name__}")
        seen: set[tuple[object, ...]] = set()
        for limit in self.limits:
            identity = (limit.scope, limit.period, limit.tenant, limit.user)
            if identity in seen:
                raise ConfigurationError(f"two limits for the same scope and period: {identity}")
            seen.add(identity)
        if not reservation_ttl_s > 0:
            raise ConfigurationError(f"reservation_ttl_s must be positive, got {reservation_ttl_s!r}")
        self.reservation_ttl_s = float(reservation_ttl_s)
        self._clock = clock

    def applicable(self, scope: Scope) -> list[Limit]:
        """The limits calls of ``scope`` count against: per scope and period, the most specific one."""
        chosen: dict[tuple[str, str | None], Limit] = {}
        for limit in self.limits:
            if not limit.applies_to(scope):
                continue
            slot = (limit.scope, limit.period)
            if slot not in chosen or limit.specificity > chosen[slot].specificity:
                chosen[slot] = limit
        return list(chosen.values())

    def reserve(self, context: CallContext, model: str, amount: Decimal) -> BudgetReservation:
        """Hold ``amount`` on every applicable limit, or raise :class:`BudgetExceeded` naming the first that
        cannot afford it."""
        _check_amount(amount, "amount", model)
        scope = context.scope
        now = self._clock()
        limits = self.applicable(scope)
        charges = [Charge(limit.bucket(scope, now), to_nano(limit.usd)) for limit in limits]
        rid = uuid.uuid4().hex
        amount_nano = to_nano(amount)
        denial = self.ledger.reserve(rid, charges, amount_nano, self.reservation_ttl_s) if charges else None
        if denial is not None:
            limit = limits[denial.index]
            name = limit.describe(scope)
            raise BudgetExceeded(
                name,
                f"{name}: spent {usd_text(from_nano(denial.spent_nano))} + held {usd_text(from_nano(denial.held_nano))}"
                f", this stage ({model}) needs up to {usd_text(from_nano(amount_nano))}",
            )
        return BudgetReservation(
            rid,
            amount,
            scope,
            model,
            keys=tuple(c.key for c in charges),
            limits=tuple(x.describe(scope) for x in limits),
        )

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Release the hold and count ``actual`` (the real cost, 0 for a failed call) as spent."""
        _check_amount(actual, "actual", reservation.model)
        if isinstance(reservation, BudgetReservation):
            keys = reservation.keys
        else:
            now = self._clock()
            keys = tuple(limit.bucket(reservation.scope, now) for limit in self.applicable(reservation.scope))
        if keys:
            self.ledger.settle(reservation.id, keys, to_nano(actual))

    async def areserve(self, context: CallContext, model: str, amount: Decimal) -> BudgetReservation:
        """:meth:`reserve` off the event loop (a ledger call may wait on a lock or the network)."""
        if isinstance(self.ledger, MemoryLedger):
            return self.reserve(context, model, amount)
        return await asyncio.to_thread(self.reserve, context, model, amount)

    async def asettle(self, reservation: Reservation, actual: Decimal) -> None:
        """:meth:`settle` off the event loop."""
        if isinstance(self.ledger, MemoryLedger):
            self.settle(reservation, actual)
        else:
            await asyncio.to_thread(self.settle, reservation, actual)

    def status(self, scope: Scope | None = None) -> list[LimitStatus]:
        """The figures of every limit that applies to ``scope`` (default scope if omitted), now."""
        scope = scope or Scope()
        now = self._clock()
        out = []
        for limit in self.applicable(scope):
            key = limit.bucket(scope, now)
            spent, held = self.ledger.figures(key)
            out.append(LimitStatus(limit.describe(scope), key, limit.usd, from_nano(spent), from_nano(held)))
        return out

    def __repr__(self) -> str:
        return f"Budget({self.ledger!r}, {self.limits!r}, reservation_ttl_s={self.reservation_ttl_s})"
