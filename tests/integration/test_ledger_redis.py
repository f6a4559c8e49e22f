"""The Redis ledger against a real ``redis-server`` on 127.0.0.1 (skipped locally without it; required in CI)."""

from __future__ import annotations

import importlib.util
import itertools
import multiprocessing
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from shared_scorer import Cascade, StageOutput
from shared_scorer.budget import Budget, BudgetExceeded, Charge, Denial, LedgerCostTracker, LedgerError, Limit
from shared_scorer.budget.redis_server import redis_server, redis_server_binary
from shared_scorer.context import CallContext, Scope
from tests.conftest import require
from tests.unit.test_budget import contract_check_and_hold, contract_records_round_trip

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    require(redis_server_binary() is not None, "redis-server is not installed (apt-get install redis-server)")
    require(importlib.util.find_spec("redis") is not None, "the redis package is not installed (pip install redis)")
    with redis_server() as url:
        yield url


@pytest.fixture
def ledger(redis_url):
    from shared_scorer.budget.redis_ledger import RedisLedger

    ledger = RedisLedger(redis_url, prefix=f"t{next(_prefixes)}")
    yield ledger
    ledger.close()


def test_contract(ledger):
    contract_check_and_hold(ledger)


def test_records_round_trip(ledger):
    contract_records_round_trip(ledger)


def test_hold_of_a_dead_worker_expires(ledger):
    assert ledger.reserve("dead", [Charge("a", 100)], 90, ttl_s=0.2) is None
    assert ledger.reserve("r2", [Charge("a", 100)], 20, ttl_s=30) == Denial(0, 0, 90)
    time.sleep(0.3)
    assert ledger.figures("a") == (0, 0)
    assert ledger.reserve("r2", [Charge("a", 100)], 20, ttl_s=30) is None
    ledger.settle("dead", ["a"], 7)
    assert ledger.figures("a") == (7, 20)


def _hammer(url: str, prefix: str, worker: int, results: multiprocessing.Queue) -> None:
    from shared_scorer.budget.redis_ledger import RedisLedger

    ledger = RedisLedger(url, prefix=prefix)
    settled = 0
    for i in range(150):
        rid = f"w{worker}-{i}"
        if ledger.reserve(rid, [Charge("overall:all", 10_000)], 37, 60) is None:
            ledger.settle(rid, ["overall:all"], 37 - i % 5)
            settled += 37 - i % 5
    results.put(settled)


def test_replicas_share_one_limit_without_overspend(redis_url):
    from shared_scorer.budget.redis_ledger import RedisLedger

    prefix = f"t{next(_prefixes)}"
    results: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_hammer, args=(redis_url, prefix, n, results)) for n in range(4)]
    for w in workers:
        w.start()
    settled = sum(results.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=30)
    spent, held = RedisLedger(redis_url, prefix=prefix).figures("overall:all")
    assert held == 0 and spent == settled
    assert 10_000 - 37 < spent <= 10_000


def test_budget_and_tracker_over_redis(ledger):
    budget = Budget(ledger, [Limit("tenant", "0.001", period="day")])
    tracker = LedgerCostTracker(ledger, scope_of=lambda result: Scope("acme", "ann"))
    prices = {"small": (1, 2), "big": (10, 20)}
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=prices, budget=budget, tracker=tracker)
    context = CallContext(Scope("acme", "ann"), input_tokens_bound=200, max_output_tokens=50)
    stages = [lambda: StageOutput("a", 100, 10), lambda: StageOutput("b", 100, 10)]
    result = cascade.run("q", stages, context=context)
    assert result.budget_stopped == "tenant 'acme' daily limit $0.001"
    (status,) = budget.status(Scope("acme"))
    assert (status.spent_usd, status.held_usd) == (Decimal("0.00012"), 0)
    assert [(r.model, r.cost_usd, r.status) for r in ledger.records()] == [
        ("small", Decimal("0.00012"), "accepted"),
        ("big", Decimal(0), "over_budget"),
    ]
    with pytest.raises(BudgetExceeded, match=r"spent \$0.00012 \+ held \$0.00, this stage \(big\) needs up to \$0.003"):
        Cascade(["big"], [], lambda q, a: 1.0, prices=prices, budget=budget, on_budget="raise").run(
            "q", stages[1:], context=context
        )


def test_unreachable_redis_is_a_clear_error():
    require(importlib.util.find_spec("redis") is not None, "the redis package is not installed (pip install redis)")
    from shared_scorer.budget.redis_ledger import RedisLedger
    from shared_scorer.budget.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(LedgerError, match=f"Redis ledger at {url}"):
        RedisLedger(url).figures("a")


@pytest.mark.parametrize(
    "template",
    [
        "redis://:s3cret@127.0.0.1:{port}/0",
        "redis://ops:s3cret@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password=s3cret",
    ],
)
def test_password_never_appears_in_errors_or_reprs(template, caplog):
    require(importlib.util.find_spec("redis") is not None, "the redis package is not installed (pip install redis)")
    from shared_scorer.budget import open_ledger
    from shared_scorer.budget.redis_ledger import RedisLedger, redact_url
    from shared_scorer.budget.redis_server import free_port

    port = free_port()  # nothing listens there: every call fails
    url = template.format(port=port)
    ledger = open_ledger(url)
    assert isinstance(ledger, RedisLedger)
    texts = [repr(ledger), str(ledger), redact_url(url)]
    for call in (lambda: ledger.figures("a"), lambda: ledger.records(), lambda: ledger.settle("r", ["a"], 1)):
        with pytest.raises(LedgerError) as info:
            call()
        texts += [str(info.value), repr(info.value), str(info.value.__cause__)]
        assert f"127.0.0.1:{port}" in str(info.value), "the error still names where"
    budget = Budget(ledger, [Limit("tenant", "1")])
    with pytest.raises(LedgerError) as info:
        budget.status(Scope("acme"))
    texts.append(str(info.value))
    assert [t for t in texts if "s3cret" in t] == []
    assert "s3cret" not in caplog.text
    assert redact_url(url) == template.format(port=port).replace("s3cret", "***")
