"""A smaller run of ``benchmarks/budget_load.py``: 4 processes, 80 requests, one budget on the Redis ledger."""

from __future__ import annotations

import importlib.util
from decimal import Decimal

import pytest

from shared_scorer.budget.redis_server import redis_server_binary
from tests.conftest import require


@pytest.mark.integration
def test_budget_holds_under_load_with_faults_and_a_killed_worker():
    require(redis_server_binary() is not None, "redis-server is not installed (apt-get install redis-server)")
    require(importlib.util.find_spec("redis") is not None, "the redis package is not installed (pip install redis)")
    from benchmarks.budget_load import run_load

    figures = run_load(workers=4, requests=80, limit_usd="0.006", ttl_s=2.0)
    assert figures["requests"] == 80
    assert figures["answered"] + figures["budget_stopped"] + figures["refused"] + figures["failed"] == 80
    assert figures["budget_stopped"] + figures["refused"] > 0, "the budget must bind in this run"
    settled = Decimal(figures["settled_usd"])
    # every settled cost is in some trail and some ledger record, to the last digit
    assert settled == Decimal(figures["trail_sum_usd"]) == Decimal(figures["records_sum_usd"]) > 0
    assert sum(Decimal(v) for v in figures["settled_by_tenant_usd"].values()) == settled
    assert Decimal(figures["overspend_usd"]) <= Decimal(figures["max_reservation_usd"])
    assert settled <= Decimal("0.006") + Decimal(figures["max_reservation_usd"])
    # the worker killed mid-call held money; its hold expired and was released, and it spent nothing
    assert Decimal(figures["killed_worker_held_usd"]) > 0
    assert Decimal(figures["held_after_usd"]) == 0
    assert figures["settled_by_tenant_usd"]["tenant:tenant=victim/day=" + _today()] == "0"


def _today() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%d")
