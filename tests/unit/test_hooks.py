"""The cascade loop's use of an answer cache and a budget (hooks given as plain test objects)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from shared_scorer import Cascade, StageOutput
from shared_scorer.context import CallContext, Scope, build_context
from shared_scorer.errors import BudgetExceeded
from shared_scorer.protocols import CacheHit, Reservation

PRICES = {"small": (1, 2), "big": (10, 20)}


class DictCache:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, Scope, str], tuple[str, str, Decimal]] = {}
        self.stored: list[tuple[str, str, str, float | None, Decimal]] = []

    def lookup(self, query, context):
        entry = self.entries.get((query, context.scope, context.fingerprint))
        return None if entry is None else CacheHit("e1", entry[0], 1.0, entry[1], entry[2])

    def store(self, query, answer, context, *, model, score, cost_usd):
        self.stored.append((query, answer, model, score, cost_usd))
        self.entries[(query, context.scope, context.fingerprint)] = (answer, model, cost_usd)


class Wallet:
    """Reserve/settle against one limit, recording every movement."""

    def __init__(self, limit: str) -> None:
        self.limit = Decimal(limit)
        self.held = Decimal(0)
        self.spent = Decimal(0)
        self.log: list[tuple[str, str, Decimal]] = []

    def reserve(self, context, model, amount):
        if self.spent + self.held + amount > self.limit:
            raise BudgetExceeded("overall", f"overall limit ${self.limit} would be crossed by {model}")
        self.held += amount
        self.log.append(("reserve", model, amount))
        return Reservation(f"r{len(self.log)}", amount, context.scope, model)

    def settle(self, reservation, actual):
        self.held -= reservation.amount
        self.spent += actual
        self.log.append(("settle", reservation.model, actual))


def calls(*texts):
    return [lambda t=t: StageOutput(t, 100, 10) for t in texts]


CONTEXT = CallContext(Scope("acme", "ann"), "fp", input_tokens_bound=200, max_output_tokens=50)


def test_accepted_answer_is_stored_and_then_served_at_zero_cost():
    cache = DictCache()
    cascade = Cascade(
        ["small", "big"], [0.5], lambda q, a: 0.9 if a == "good" else 0.1, prices=PRICES, answer_cache=cache
    )
    first = cascade.run("q", calls("good", "unused"), context=CONTEXT)
    assert cache.stored == [("q", "good", "small", 0.9, Decimal("0.00012"))]
    second = cascade.run("q", [None, None], context=CONTEXT)
    assert second.cache_hit is not None and second.output.text == "good"
    assert second.cost_usd == Decimal(0) and second.model == "small"
    assert second.trail()["cache_hit"] == {"entry_id": "e1", "similarity": 1.0, "saved_usd": "0.00012"}
    summary = cascade.tracker.summary(decimals=True)
    assert summary["cache_hits"] == 1 and summary["cache_saved_usd"] == Decimal("0.00012")
    assert summary["total_cost_usd"] == first.cost_usd


def test_other_scope_or_fingerprint_misses():
    cache = DictCache()
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, answer_cache=cache)
    cascade.run("q", calls("a"), context=CONTEXT)
    other_user = CallContext(Scope("acme", "bob"), "fp")
    other_turns = CallContext(Scope("acme", "ann"), "fp2")
    assert cascade.run("q", calls("b"), context=other_user).cache_hit is None
    assert cascade.run("q", calls("c"), context=other_turns).cache_hit is None


def test_fallback_rejected_and_uncacheable_answers_are_not_stored():
    from shared_scorer.outcome import ToolCall

    cache = DictCache()
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, answer_cache=cache)

    def broken():
        raise ConnectionError("down")

    result = cascade.run("q", [calls("meh")[0], broken])
    assert result.fallback and cache.stored == []
    tool = StageOutput("", 1, 1, tool_calls=(ToolCall("f", {}),))
    cascade.run("q2", [calls("x")[0], lambda: tool])
    cascade.run("q3", calls("x", "y"), context=CallContext(cacheable=False))
    assert cache.stored == []


def test_a_failing_cache_is_a_miss_not_an_error():
    class Broken:
        def lookup(self, query, context):
            raise OSError("disk gone")

        def store(self, *args, **kwargs):
            raise OSError("disk gone")

    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, answer_cache=Broken())
    assert cascade.run("q", calls("a")).output.text == "a"


def test_budget_reserves_worst_case_and_settles_real_cost():
    wallet = Wallet("1")
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=wallet)
    cascade.run("q", calls("a", "b"), context=CONTEXT)
    # worst case: 200 input tokens and 50 output tokens at each stage's price
    assert wallet.log == [
        ("reserve", "small", Decimal("0.0003")),
        ("settle", "small", Decimal("0.00012")),
        ("reserve", "big", Decimal("0.003")),
        ("settle", "big", Decimal("0.0012")),
    ]
    assert wallet.held == 0 and wallet.spent == Decimal("0.00132")


def test_unaffordable_stage_stops_at_best_answer_in_hand():
    wallet = Wallet("0.001")  # affords small's worst case (0.0003), not big's (0.003)
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=wallet)
    result = cascade.run("q", calls("a", "b"), context=CONTEXT)
    assert result.output.text == "a" and result.budget_stopped == "overall"
    assert [a.status for a in result.attempts] == ["accepted", "over_budget"]
    assert "overall limit $0.001 would be crossed by big" in result.attempts[1].error
    assert cascade.tracker.summary()["budget_stops"] == 1


def test_unaffordable_stage_raises_when_asked_or_when_nothing_in_hand():
    wallet = Wallet("0.001")
    raising = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=wallet, on_budget="raise")
    with pytest.raises(BudgetExceeded) as info:
        raising.run("q", calls("a", "b"), context=CONTEXT)
    assert info.value.limit == "overall"
    assert raising.tracker.summary(decimals=True)["total_cost_usd"] == Decimal("0.00012")
    broke = Cascade(["big"], [], lambda q, a: 1.0, prices=PRICES, budget=Wallet("0.0001"))
    with pytest.raises(BudgetExceeded):
        broke.run("q", calls("a"), context=CONTEXT)


def test_failed_call_settles_to_zero():
    wallet = Wallet("1")
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 1.0, prices=PRICES, budget=wallet)

    def broken():
        raise TimeoutError("slow")

    cascade.run("q", [broken, calls("b")[0]], context=CONTEXT)
    assert wallet.log[1] == ("settle", "small", Decimal(0))


def test_async_hooks_are_awaited():
    class AsyncWallet(Wallet):
        async def areserve(self, context, model, amount):
            return self.reserve(context, model, amount)

        async def asettle(self, reservation, actual):
            self.settle(reservation, actual)

    class AsyncCache(DictCache):
        async def alookup(self, query, context):
            return self.lookup(query, context)

        async def astore(self, *args, **kwargs):
            self.store(*args, **kwargs)

    wallet, cache = AsyncWallet("0.001"), AsyncCache()
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=wallet, answer_cache=cache)

    async def answer():
        return StageOutput("a", 100, 10)

    result = asyncio.run(cascade.arun("q", [answer, answer], context=CONTEXT))
    assert result.budget_stopped == "overall" and wallet.held == 0
    assert cache.stored == []  # a budget stop is not an accepted answer


def test_context_fingerprint_covers_earlier_turns_tools_and_strategy():
    scope = Scope()
    base = build_context([("system", "be brief"), ("user", "capital of France?")], scope=scope)
    same = build_context([("system", "be brief"), ("user", "capital of Spain?")], scope=scope)
    assert base.fingerprint == same.fingerprint  # the question itself is matched by the cache, not here
    variants = [
        build_context([("system", "be verbose"), ("user", "capital of France?")], scope=scope),
        build_context([("user", "hi"), ("assistant", "hello"), ("user", "capital of France?")], scope=scope),
        build_context([("system", "be brief"), ("user", "capital of France?")], scope=scope, tools=[{"name": "f"}]),
        build_context([("system", "be brief"), ("user", "capital of France?")], scope=scope, strategy="s2"),
        build_context([("system", "be brief"), ("user", "x")], scope=scope, output_schema={"type": "object"}),
    ]
    assert len({v.fingerprint for v in variants} | {base.fingerprint}) == 6
    assert base.input_tokens_bound == len("be brief") + len("capital of France?") + 2 * 16 + 64
