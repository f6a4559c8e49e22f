"""A smaller run of ``benchmarks/budget_load.py``: 4 ``frugal serve`` replicas, 80 requests (streamed, hung up,
long, hostile), one budget on the Redis ledger; every bill of the replay server is settled and recorded."""

from __future__ import annotations

import importlib.util
from decimal import Decimal

import pytest

from shared_scorer.budget.redis_server import redis_server_binary
from tests.conftest import require


@pytest.mark.integration
def test_budget_holds_under_load_with_faults_hangups_and_a_killed_worker():
    require(redis_server_binary() is not None, "redis-server is not installed (apt-get install redis-server)")
    for package in ("redis", "uvicorn", "starlette", "langchain_openai"):
        require(importlib.util.find_spec(package) is not None, f"{package} is not installed (pip install {package})")
    from benchmarks.budget_load import run_load

    figures = run_load(workers=4, requests=80, limit_usd="0.7", ttl_s=2.0)  # each tenant $0.35: about 5 long replies
    assert figures["requests"] == 80
    assert figures["kinds"] == {"long-stream-hangup": 8, "long": 8, "stream": 16, "hostile": 8,
                                "stream-hangup": 8, "plain": 32}  # fmt: skip
    outcomes = ("answered", "budget_stopped", "refused", "failed", "bad_request", "disconnected")
    assert sum(figures[name] for name in outcomes) == 80
    assert figures["bad_request"] == 8 and figures["hostile_accepted"] == 0, "every hostile max_tokens is a 400"
    assert figures["disconnected"] >= 8, "the long streams were hung up on mid-way"
    assert figures["budget_stopped"] + figures["refused"] > 0, "the budget must bind in this run"
    assert figures["long_replies_billed"] > 0, "replies past 4,096 output tokens went through"
    # what the provider billed is what the ledger settled and recorded, to the last digit, per tenant too;
    # the only extra is the tokens counted for streamed replies that carried no usage (garbage bodies)
    billed, estimated = Decimal(figures["billed_usd"]), Decimal(figures["estimated_usd"])
    assert billed + estimated == Decimal(figures["settled_usd"]) == Decimal(figures["records_sum_usd"])
    assert billed > 0 and figures["unrecorded_bills"] == 0 and figures["misattributed_requests"] == 0
    assert len(figures["estimated_records"]) <= figures["replies_without_usage"]
    assert all(" load-big: " in line for line in figures["estimated_records"]), "only the live-streamed stage"
    for tenant, row in figures["tenants"].items():
        settled = Decimal(row["billed_usd"]) + Decimal(row["estimated_usd"])
        assert settled == Decimal(row["settled_usd"]) == Decimal(row["records_usd"]), tenant
        assert row["misattributed_requests"] == 0, tenant
        assert Decimal(row["overspend_usd"]) <= Decimal(figures["max_reservation_usd"]), tenant
    assert Decimal(figures["overspend_usd"]) <= Decimal(figures["max_reservation_usd"])
    # the worker killed mid-call held money; its hold expired and was released, and it spent nothing
    assert Decimal(figures["killed_worker_held_usd"]) > 0
    assert Decimal(figures["held_after_usd"]) == 0
    assert figures["tenants"]["victim"]["settled_usd"] == "0"
