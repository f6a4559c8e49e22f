"""The SQLite ledger shared by several processes: no reservation race, exact totals, durable records."""

from __future__ import annotations

import multiprocessing
from decimal import Decimal
from pathlib import Path

import pytest

from shared_scorer.budget import Budget, BudgetExceeded, Charge, Limit, SQLiteLedger, open_ledger
from shared_scorer.context import CallContext, Scope
from shared_scorer.errors import ConfigurationError

LIMIT_NANO = 10_000
AMOUNT = 37


def _hammer(path: str, worker: int, attempts: int, results: multiprocessing.Queue) -> None:
    ledger = SQLiteLedger(path)
    granted = settled = 0
    for i in range(attempts):
        rid = f"w{worker}-{i}"
        if ledger.reserve(rid, [Charge("overall:all", LIMIT_NANO), Charge(f"tenant:w{worker}", 10**12)], AMOUNT, 60):
            continue  # refused
        granted += 1
        actual = AMOUNT - (i % 5)  # the real cost is at most the reservation
        ledger.settle(rid, ["overall:all", f"tenant:w{worker}"], actual)
        settled += actual
    results.put((worker, granted, settled))


def test_processes_share_one_limit_without_overspend(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    SQLiteLedger(path)  # create the schema once
    results: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_hammer, args=(path, n, 120, results)) for n in range(4)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    ledger = SQLiteLedger(path)
    spent, held = ledger.figures("overall:all")
    assert held == 0
    assert spent == sum(settled for _, _, settled in outcomes) <= LIMIT_NANO
    assert LIMIT_NANO - spent < AMOUNT, "the limit was used up, and never crossed"
    for worker, _, settled in outcomes:
        assert ledger.figures(f"tenant:w{worker}") == (settled, 0)


def _spend(path: str, tenant: str) -> None:
    budget = Budget(path, [Limit("tenant", "1", period="day")])
    context = CallContext(Scope(tenant, "u"))
    while True:
        try:
            held = budget.reserve(context, "m", Decimal("0.03"))
        except BudgetExceeded:
            return
        budget.settle(held, Decimal("0.01"))


def test_budget_over_sqlite_from_several_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "budget.db")
    SQLiteLedger(path)
    workers = [multiprocessing.Process(target=_spend, args=(path, "acme")) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    (status,) = Budget(path, [Limit("tenant", "1", period="day")]).status(Scope("acme"))
    # each call holds $0.03 and spends $0.01; a process stops once spent + held + $0.03 > $1, where the
    # other two processes hold at most $0.06 between them
    assert status.held_usd == 0
    assert Decimal("0.91") < status.spent_usd <= Decimal(1)
    assert status.spent_usd % Decimal("0.01") == 0


def test_sqlite_urls_follow_sqlalchemy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///ledger.db`` is relative to the working folder; ``sqlite:////abs/path`` is absolute."""
    monkeypatch.chdir(tmp_path)
    relative = open_ledger("sqlite:///ledger.db")
    assert isinstance(relative, SQLiteLedger) and relative.path == Path("ledger.db")
    assert (tmp_path / "ledger.db").is_file()
    relative.close()
    absolute = open_ledger(f"sqlite:///{tmp_path}/abs.db")  # tmp_path starts with "/": four slashes
    assert isinstance(absolute, SQLiteLedger) and absolute.path == tmp_path / "abs.db"
    absolute.close()
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/ledger.db"):
        with pytest.raises(ConfigurationError, match=r"sqlite:///relative\.db or sqlite:////absolute/path\.db"):
            open_ledger(bad)


def test_must_exist_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for spec in ("sqlite:///missing.db", "missing.db", f"sqlite:///{tmp_path}/missing.db"):
        with pytest.raises(ConfigurationError, match=r"ledger '.*missing\.db' does not exist"):
            open_ledger(spec, must_exist=True)
    assert list(tmp_path.iterdir()) == []
    open_ledger("sqlite:///there.db").close()
    assert isinstance(open_ledger("sqlite:///there.db", must_exist=True), SQLiteLedger)
