"""Budget: limits, periods, messages, the memory and SQLite ledgers, and stop vs raise through the real Cascade.

The ``contract_*`` helpers state what every ledger backend must do; the Redis tests reuse them.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from shared_scorer import Cascade, ConfigurationError, StageOutput
from shared_scorer.budget import (
    Budget,
    BudgetExceeded,
    Charge,
    Denial,
    LedgerCostTracker,
    Limit,
    MemoryLedger,
    SQLiteLedger,
    from_nano,
    open_ledger,
    to_nano,
    usd_text,
)
from shared_scorer.budget.ledger import Ledger, SpendRecord
from shared_scorer.context import CallContext, Scope

PRICES = {"small": (1, 2), "big": (10, 20)}
ACME_ANN = CallContext(Scope("acme", "ann"), "fp", input_tokens_bound=200, max_output_tokens=50)
# worst cases: small 200*1 + 50*2 = 300 micro-USD = $0.0003; big $0.003. Real: small 100/10 -> $0.00012.


class Clock:
    def __init__(self, when: str = "2026-05-09T23:59:30") -> None:
        self.now = datetime.fromisoformat(when).replace(tzinfo=timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now


def calls(*texts):
    return [lambda t=t: StageOutput(t, 100, 10) for t in texts]


# ---------------------------------------------------------------- the ledger contract


def contract_check_and_hold(ledger: Ledger) -> None:
    both = [Charge("a", 100), Charge("b", 1000)]
    assert ledger.reserve("r1", both, 60, ttl_s=30) is None
    assert ledger.figures("a") == (0, 60) and ledger.figures("b") == (0, 60)
    assert ledger.reserve("r2", both, 41, ttl_s=30) == Denial(0, 0, 60)
    assert ledger.figures("b") == (0, 60), "a refused reservation holds nothing anywhere"
    assert ledger.reserve("r3", [Charge("b", 1000), Charge("a", 100)], 40, ttl_s=30) is None
    ledger.settle("r1", ["a", "b"], 25)
    assert ledger.figures("a") == (25, 40) and ledger.figures("b") == (25, 40)
    ledger.settle("r3", ["a", "b"], 0)
    assert ledger.figures("a") == (25, 0)
    assert ledger.reserve("r4", [Charge("a", 100)], 76, ttl_s=30) == Denial(0, 25, 0)
    assert ledger.reserve("r5", [Charge("a", 100)], 75, ttl_s=30) is None


def contract_records_round_trip(ledger: Ledger) -> None:
    row = SpendRecord(
        ts=1778371200.25, day="2026-05-10", request="q1", tenant="acme", user="ann", model="big", stage=1,
        status="accepted", cost_usd=Decimal("0.000123456789012"), input_tokens=12, output_tokens=3,
        escalated=False, answered=True, all_last_usd=Decimal("0.0002"),
    )  # fmt: skip
    hit = SpendRecord(
        ts=1778371201.0, day="2026-05-10", request="q2", tenant="acme", user="bob", model="small", stage=-1,
        status="cache_hit", cost_usd=Decimal(0), cache_hit=True, answered=True, saved_usd=Decimal("0.5"),
    )  # fmt: skip
    ledger.record([row, hit])
    assert ledger.records() == [row, hit]
    assert ledger.records(since=1778371201.0) == [hit]


def test_memory_ledger_contract():
    contract_check_and_hold(MemoryLedger())
    contract_records_round_trip(MemoryLedger())


def test_sqlite_ledger_contract(tmp_path):
    contract_check_and_hold(SQLiteLedger(tmp_path / "a.db"))
    contract_records_round_trip(SQLiteLedger(tmp_path / "b.db"))
    reopened = SQLiteLedger(tmp_path / "a.db")
    assert reopened.figures("a") == (25, 75), "the SQLite ledger is durable"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_unsettled_hold_expires(backend, tmp_path):
    clock = Clock()
    ledger = MemoryLedger(clock=clock) if backend == "memory" else SQLiteLedger(tmp_path / "l.db", clock=clock)
    assert ledger.reserve("dead-worker", [Charge("a", 100)], 90, ttl_s=10) is None
    assert ledger.reserve("r2", [Charge("a", 100)], 20, ttl_s=10) == Denial(0, 0, 90)
    clock.now += 10
    assert ledger.figures("a") == (0, 0)
    assert ledger.reserve("r2", [Charge("a", 100)], 20, ttl_s=10) is None
    ledger.settle("dead-worker", ["a"], 7)  # settling late still counts the money, holds nothing
    assert ledger.figures("a") == (7, 20)


def test_memory_ledger_never_overcommits_under_threads():
    ledger = MemoryLedger()
    granted = []

    def worker(n: int) -> None:
        for i in range(50):
            if ledger.reserve(f"{n}-{i}", [Charge("a", 1000)], 7, ttl_s=60) is None:
                granted.append(1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 1000 // 7 and ledger.figures("a") == (0, 7 * (1000 // 7))


def test_money_units_round_up_and_back():
    assert to_nano(Decimal("0.000000001")) == 1
    assert to_nano(Decimal("0.0000000011")) == 2, "rounded up: the accounting never under-counts"
    assert from_nano(to_nano(Decimal("49.9"))) == Decimal("49.9")
    assert [usd_text(Decimal(x)) for x in ("50", "0.05", "0.000125", "49.9")] == [
        "$50.00",
        "$0.05",
        "$0.000125",
        "$49.90",
    ]


def test_open_ledger_urls(tmp_path):
    assert isinstance(open_ledger("memory:"), MemoryLedger)
    assert isinstance(open_ledger(str(tmp_path / "x.db")), SQLiteLedger)
    assert open_ledger(f"sqlite:///{tmp_path}/y.db").path == tmp_path / "y.db"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="unknown ledger URL 'ftp://x'"):
        open_ledger("ftp://x")
    with pytest.raises(ConfigurationError, match="does not exist"):
        open_ledger(str(tmp_path / "missing" / "x.db"))


# ---------------------------------------------------------------- limits


def test_limit_validation():
    with pytest.raises(ConfigurationError, match="not a float"):
        Limit("tenant", 50.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="scope must be"):
        Limit("team", "5")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="period must be"):
        Limit("tenant", "5", "week")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot name a tenant"):
        Limit("overall", "5", tenant="acme")
    with pytest.raises(ConfigurationError, match="between 0 and"):
        Limit("overall", "-1")
    with pytest.raises(ConfigurationError, match="same scope and period"):
        Budget("memory:", [Limit("tenant", "5"), Limit("tenant", "6")])


def test_message_names_the_limit_and_figures():
    ledger = MemoryLedger()
    budget = Budget(ledger, [Limit("tenant", "50", period="day"), Limit("overall", "1000", period="month")])
    first = budget.reserve(ACME_ANN, "gpt-4o", Decimal("49.90"))
    budget.settle(first, Decimal("49.90"))
    budget.reserve(ACME_ANN, "gpt-4o-mini", Decimal("0.05"))
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(ACME_ANN, "gpt-4o", Decimal("0.08"))
    assert info.value.limit == "tenant 'acme' daily limit $50.00"
    assert str(info.value) == (
        "tenant 'acme' daily limit $50.00: spent $49.90 + held $0.05, this stage (gpt-4o) needs up to $0.08"
    )
    # another tenant is not affected by acme's spend; the overall limit counts both
    other = budget.reserve(CallContext(Scope("globex")), "gpt-4o", Decimal("40"))
    assert other.limits == ("tenant 'globex' daily limit $50.00", "overall monthly limit $1000.00")
    overall = budget.status(Scope("globex"))[1]
    assert (overall.spent_usd, overall.held_usd, overall.remaining_usd) == (
        Decimal("49.9"), Decimal("40.05"), Decimal("910.05"),
    )  # fmt: skip


def test_specific_limits_replace_general_ones_and_users_are_separate():
    budget = Budget(
        "memory:",
        [
            Limit("tenant", "1", period=None),
            Limit("tenant", "5", period=None, tenant="acme"),
            Limit("user", "2", period="hour", tenant="acme"),
            Limit("user", "3", period="hour", tenant="acme", user="boss"),
        ],
    )
    names = [limit.describe(Scope("acme", "ann")) for limit in budget.applicable(Scope("acme", "ann"))]
    assert names == ["tenant 'acme' total limit $5.00", "user 'ann' of tenant 'acme' hourly limit $2.00"]
    assert [x.usd for x in budget.applicable(Scope("acme", "boss"))] == [Decimal(5), Decimal(3)]
    assert [x.usd for x in budget.applicable(Scope("globex", "ann"))] == [Decimal(1)]
    budget.reserve(CallContext(Scope("acme", "ann")), "m", Decimal("2"))
    budget.reserve(CallContext(Scope("acme", "bob")), "m", Decimal("2"))  # bob has his own $2
    with pytest.raises(BudgetExceeded, match=r"^user 'ann' of tenant 'acme' hourly limit \$2.00: spent \$0.00 \+ held"):
        budget.reserve(CallContext(Scope("acme", "ann")), "m", Decimal("0.01"))
    with pytest.raises(BudgetExceeded, match=r"^tenant 'acme' total limit \$5.00: spent \$0.00 \+ held \$4.00"):
        budget.reserve(CallContext(Scope("acme", "boss")), "m", Decimal("1.01"))


@pytest.mark.parametrize(
    ("period", "step_s", "fresh"),
    [("hour", 60, True), ("day", 60, True), ("month", 60, False), (None, 86400 * 40, False)],
)
def test_periods_start_afresh(period, step_s, fresh):
    clock = Clock("2026-05-09T23:59:30")  # the next minute is a new hour and a new day, not a new month
    budget = Budget(MemoryLedger(clock=clock), [Limit("overall", "1", period=period)], clock=clock)
    budget.settle(budget.reserve(CallContext(), "m", Decimal("0.9")), Decimal("0.9"))
    assert budget.status()[0].key == {
        "hour": "overall:hour=2026-05-09T23", "day": "overall:day=2026-05-09", "month": "overall:month=2026-05",
        None: "overall:all",
    }[period]  # fmt: skip
    clock.now += step_s
    if fresh:
        assert budget.reserve(CallContext(), "m", Decimal("0.9")).amount == Decimal("0.9")
    else:
        with pytest.raises(BudgetExceeded):
            budget.reserve(CallContext(), "m", Decimal("0.9"))


def test_settle_uses_the_reservations_period_even_after_midnight():
    clock = Clock("2026-05-09T23:59:59")
    budget = Budget(MemoryLedger(clock=clock), [Limit("overall", "1", period="day")], clock=clock)
    held = budget.reserve(CallContext(), "m", Decimal("0.5"))
    clock.now += 5
    budget.settle(held, Decimal("0.25"))
    assert budget.ledger.figures("overall:day=2026-05-09") == (to_nano(Decimal("0.25")), 0)
    assert budget.status()[0].spent_usd == 0


# ---------------------------------------------------------------- through the real Cascade


def test_cascade_reserves_worst_case_and_settles_exact_costs(tmp_path):
    ledger = SQLiteLedger(tmp_path / "l.db")
    budget = Budget(ledger, [Limit("tenant", "1")])
    tracker = LedgerCostTracker(ledger, scope_of=lambda result: Scope("acme", "ann"))
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=budget, tracker=tracker)
    result = cascade.run("q", calls("a", "b"), context=ACME_ANN)
    assert result.cost_usd == Decimal("0.00132")
    assert budget.status(Scope("acme"))[0].spent_usd == result.cost_usd
    assert budget.status(Scope("acme"))[0].held_usd == 0
    rows = ledger.records()
    assert [(r.model, r.stage, r.status, r.cost_usd, r.escalated, r.answered) for r in rows] == [
        ("small", 0, "rejected", Decimal("0.00012"), True, False),
        ("big", 1, "accepted", Decimal("0.0012"), False, True),
    ]
    assert {(r.tenant, r.user) for r in rows} == {("acme", "ann")}


def test_cascade_stops_at_best_answer_when_next_stage_unaffordable():
    budget = Budget("memory:", [Limit("tenant", "0.001", period="day")])  # small's $0.0003 fits, big's $0.003 not
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=budget)
    result = cascade.run("q", calls("a", "b"), context=ACME_ANN)
    assert result.output is not None and result.output.text == "a"
    assert result.budget_stopped == "tenant 'acme' daily limit $0.001"
    assert [a.status for a in result.attempts] == ["accepted", "over_budget"]
    assert result.attempts[1].error == (
        "tenant 'acme' daily limit $0.001: spent $0.00012 + held $0.00, this stage (big) needs up to $0.003"
    )
    assert budget.status(Scope("acme"))[0].spent_usd == Decimal("0.00012")


def test_cascade_raises_when_asked_and_counts_what_was_spent():
    budget = Budget("memory:", [Limit("user", "0.001", period="day")])
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=budget, on_budget="raise")
    with pytest.raises(BudgetExceeded) as info:
        cascade.run("q", calls("a", "b"), context=ACME_ANN)
    assert info.value.limit == "user 'ann' of tenant 'acme' daily limit $0.001"
    assert budget.status(Scope("acme", "ann"))[0].spent_usd == Decimal("0.00012")
    assert budget.status(Scope("acme", "ann"))[0].held_usd == 0


def test_failed_stage_settles_to_zero_and_async_path_uses_the_ledger(tmp_path):
    budget = Budget(SQLiteLedger(tmp_path / "l.db"), [Limit("overall", "1")])

    async def broken() -> StageOutput:
        raise ConnectionError("down")

    async def good() -> StageOutput:
        return StageOutput("b", 100, 10)

    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=budget)
    result = asyncio.run(cascade.arun("q", [broken, good], context=ACME_ANN))
    assert [a.status for a in result.attempts] == ["error", "accepted"]
    status = budget.status()[0]
    assert (status.spent_usd, status.held_usd) == (Decimal("0.0012"), 0)


def test_cache_hits_and_failures_are_recorded():
    from shared_scorer.budget import records_of
    from shared_scorer.outcome import Attempt, CascadeResult
    from shared_scorer.protocols import CacheHit

    hit = CascadeResult(
        output=StageOutput("x"),
        answer_stage=None,
        attempts=[],
        cache_hit=CacheHit("e", "x", 1.0, "big", Decimal("0.2")),
    )
    (row,) = records_of(hit, Scope("acme", "ann"), ts=0.0)
    assert (row.stage, row.model, row.cache_hit, row.saved_usd, row.day) == (
        -1,
        "big",
        True,
        Decimal("0.2"),
        "1970-01-01",
    )
    refused = CascadeResult(output=None, answer_stage=None, attempts=[Attempt(0, "small", status="over_budget")])
    (row,) = records_of(refused, Scope(), ts=0.0, failed=True)
    assert (row.status, row.cost_usd, row.failed, row.escalated) == ("over_budget", 0, True, False)
