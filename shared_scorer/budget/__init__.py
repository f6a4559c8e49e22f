"""Budgets: spending limits per tenant, user and overall, enforced before each stage call.

>>> from shared_scorer.budget import Budget, Limit
>>> budget = Budget("memory:", [Limit("tenant", "50", period="day"), Limit("overall", "500", period="month")])
>>> [limit.describe(Scope("acme")) for limit in budget.applicable(Scope("acme"))]
["tenant 'acme' daily limit $50.00", 'overall monthly limit $500.00']

``Budget`` implements the cascade's budget hook; the ledger (``MemoryLedger``, ``SQLiteLedger``,
``RedisLedger``, or :func:`open_ledger` from a URL) keeps the money and the spend records;
``LedgerCostTracker`` writes every cascade call to the ledger so that ``frugal report`` can read it.
"""

from shared_scorer.budget.budget import Budget, BudgetReservation, Limit, LimitStatus, usd_text
from shared_scorer.budget.ledger import Charge, Denial, Ledger, MemoryLedger, SpendRecord, from_nano, to_nano
from shared_scorer.budget.sqlite_ledger import SQLiteLedger
from shared_scorer.budget.tracker import LedgerCostTracker, records_of
from shared_scorer.budget.urls import open_ledger
from shared_scorer.context import Scope
from shared_scorer.errors import BudgetExceeded, LedgerError

__all__ = [
    "Budget",
    "BudgetExceeded",
    "BudgetReservation",
    "Charge",
    "Denial",
    "Ledger",
    "LedgerCostTracker",
    "LedgerError",
    "Limit",
    "LimitStatus",
    "MemoryLedger",
    "RedisLedger",
    "SQLiteLedger",
    "Scope",
    "SpendRecord",
    "from_nano",
    "open_ledger",
    "records_of",
    "to_nano",
    "usd_text",
]


def __getattr__(name: str) -> object:
    if name == "RedisLedger":  # imported lazily: it needs the optional 'redis' package only when used
        from shared_scorer.budget.redis_ledger import RedisLedger

        return RedisLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
