"""Caller tiers and tenant-wide cache sharing: one fit, several operating points, honoured the same way by
FrugalChatModel, FrugalLLM and ``frugal serve`` (both backends), over real clients and the replay server."""

from __future__ import annotations

import importlib
import json
from decimal import Decimal
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI
from llama_index.llms.openai_like import OpenAILike

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer import TokenPrice
from shared_scorer.budget import Budget, Limit, MemoryLedger
from shared_scorer.cache import AnswerCache, HashingEmbedder
from shared_scorer.context import Scope
from shared_scorer.errors import ConfigurationError
from shared_scorer.server.testing import make_record, replay_server, serving
from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

SMALL, BIG = "tier-small", "tier-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
AUTHOR, CAPITAL = "Who wrote Middlemarch?", "What is the capital of Australia?"
RECORDS = [
    make_record(AUTHOR, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(AUTHOR, "George Eliot", model=BIG, input_tokens=12, output_tokens=4),
    make_record(CAPITAL, "Sydney, probably", model=SMALL, input_tokens=10, output_tokens=3),
    make_record(CAPITAL, "Canberra", model=BIG, input_tokens=10, output_tokens=2),
]
SCORES = {"Charles Dickens": 0.2, "Sydney, probably": 0.6}
TIERS = {"free": {"budget": 0.002}, "paid": {"target_accuracy": "best_single"}}
TENANTS = {"globex": {"tier": "paid"}}


def scorer(query: str, answer: str) -> float:
    return SCORES.get(answer, 0.95)


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(tokens_in, tokens_out)


def strategy() -> Strategy:
    """free ($0.002) is the small model alone; paid (the best single model's accuracy, 0.78) is small then
    big capped at 64 tokens at threshold 0.5; the strategy's own point (the most accurate) escalates at 0.7."""
    frontier = Frontier(
        [
            FrontierPoint((SMALL,), (), accuracy=0.60, cost=0.001),
            FrontierPoint((SMALL, f"{BIG}@64"), (0.5,), accuracy=0.80, cost=0.004),
            FrontierPoint((SMALL, BIG), (0.7,), accuracy=0.85, cost=0.006),
            FrontierPoint((BIG,), (), accuracy=0.78, cost=0.010),  # dominated: the cascade above is cheaper
        ]
    )
    info = {"single_models": {SMALL: {"accuracy": 0.60, "cost_per_query": 0.001}, BIG: {"accuracy": 0.78}}}
    return Strategy.from_frontier(frontier, scorer="scorer", data_fingerprint="f" * 64, info=info)


# (tier the call names, tenant, user, query) -> (answer, stages called, exact cost)
CALLS = [
    (("free", "acme", "ann", AUTHOR), ("Charles Dickens", [SMALL], cost(SMALL, 12, 3))),
    (("paid", "acme", "bob", AUTHOR), ("George Eliot", [SMALL, BIG], cost(SMALL, 12, 3) + cost(BIG, 12, 4))),
    (("paid", "acme", "bob", CAPITAL), ("Sydney, probably", [SMALL], cost(SMALL, 10, 3))),
    ((None, "globex", "carol", AUTHOR), ("George Eliot", [SMALL, BIG], cost(SMALL, 12, 3) + cost(BIG, 12, 4))),
    ((None, "initech", "dan", CAPITAL), ("Canberra", [SMALL, BIG], cost(SMALL, 10, 3) + cost(BIG, 10, 2))),
]
KEYS = {  # frugal serve: each key names its tenant, user and (optionally) tier
    "sk-ann": {"tenant": "acme", "user": "ann", "tier": "free"},
    "sk-bob": {"tenant": "acme", "user": "bob", "tier": "paid"},
    "sk-carol": {"tenant": "globex", "user": "carol"},
    "sk-dan": {"tenant": "initech", "user": "dan"},
}
KEY_OF = {"ann": "sk-ann", "bob": "sk-bob", "carol": "sk-carol", "dan": "sk-dan"}


def chat_stages(base_url: str) -> dict[str, ChatOpenAI]:
    return {m: ChatOpenAI(model=m, base_url=base_url, api_key="t", max_retries=0, timeout=5) for m in (SMALL, BIG)}


def like_stages(base_url: str) -> dict[str, OpenAILike]:
    return {
        m: OpenAILike(model=m, api_base=base_url, api_key="t", is_chat_model=True, max_retries=0, timeout=5)
        for m in (SMALL, BIG)
    }


def lc_model(base_url: str, **options: Any) -> FrugalChatModel:
    return FrugalChatModel.from_strategy(strategy(), chat_stages(base_url), scorer=scorer, prices=PRICES, **options)


def li_model(base_url: str, **options: Any) -> FrugalLLM:
    return FrugalLLM.from_strategy(strategy(), like_stages(base_url), scorer=scorer, prices=PRICES, **options)


def comparable(trail: dict[str, Any]) -> dict[str, Any]:
    """The trail without timings."""
    stages = [{k: v for k, v in s.items() if k != "latency_ms"} for s in trail["stages"]]
    return {**{k: v for k, v in trail.items() if k != "latency_ms"}, "stages": stages}


def lc_call(model: FrugalChatModel, tier: str | None, tenant: str, user: str, query: str) -> dict[str, Any]:
    metadata = {"tenant": tenant, "user": user, **({"tier": tier} if tier else {})}
    message = model.invoke(query, config={"metadata": metadata})
    return {"answer": message.content, **comparable(message.response_metadata["frugal"])}


def li_call(model: FrugalLLM, tier: str | None, tenant: str, user: str, query: str) -> dict[str, Any]:
    response = model.complete(query, tenant=tenant, user=user, **({"tier": tier} if tier else {}))
    return {"answer": response.text, **comparable(response.additional_kwargs["frugal"])}


def lc_streamed(model: FrugalChatModel, tier: str | None, tenant: str, user: str, query: str) -> dict[str, Any]:
    metadata = {"tenant": tenant, "user": user, **({"tier": tier} if tier else {})}
    chunks = list(model.stream(query, config={"metadata": metadata}))
    trail = next(c.response_metadata["frugal"] for c in chunks if "frugal" in c.response_metadata)
    return {"answer": "".join(str(c.content) for c in chunks), **comparable(trail)}


def li_streamed(model: FrugalLLM, tier: str | None, tenant: str, user: str, query: str) -> dict[str, Any]:
    responses = list(model.stream_complete(query, tenant=tenant, user=user, **({"tier": tier} if tier else {})))
    return {"answer": responses[-1].text, **comparable(responses[-1].additional_kwargs["frugal"])}


def served_calls(framework: str, base_url: str) -> list[dict[str, Any]]:
    """Every call of :data:`CALLS` through ``frugal serve`` (as it builds its backend), by each caller's key."""
    from shared_scorer.server.gateway import make_app

    module = importlib.import_module(f"frugal_{framework}.serve")
    backend = module.serve_backend(
        strategy(), base_url=base_url, api_key="t", scorer=scorer, prices=PRICES, tiers=TIERS, tenants=TENANTS
    )
    out = []
    with serving(make_app(backend, KEYS)) as url:
        for (_, _, user, query), _ in CALLS:
            client = openai.OpenAI(base_url=url, api_key=KEY_OF[user], max_retries=0, timeout=10)
            reply = client.chat.completions.create(model="frugal", messages=[{"role": "user", "content": query}])
            out.append({"answer": reply.choices[0].message.content, **comparable(reply.model_extra["frugal"])})
    return out


def test_tiers_pick_their_frontier_points_and_caps():
    with replay_server(RECORDS) as server:
        model = lc_model(server.base_url, tiers=TIERS, tenants=TENANTS)
    assert model.cascade.models == [SMALL, BIG] and model.thresholds == [0.7]  # the strategy's own point
    assert sorted(model.tiers) == ["free", "paid"]
    assert model.tiers["free"].cascade.models == [SMALL] and model.tiers["free"].thresholds == []
    assert model.tiers["paid"].cascade.models == [SMALL, BIG] and model.tiers["paid"].thresholds == [0.5]
    assert model.tiers["paid"].stages[1].max_tokens == 64 and model.stages[1].max_tokens is None
    assert model.tiers["paid"].cost_tracker is model.cost_tracker  # one tracker: every tier's spend in one place
    assert len({model.strategy_id, model.tiers["free"].strategy_id, model.tiers["paid"].strategy_id}) == 3


def test_adapters_and_both_serve_backends_give_the_same_chains_answers_and_costs():
    with replay_server(RECORDS) as server:
        lc = lc_model(server.base_url, tiers=TIERS, tenants=TENANTS)
        li = li_model(server.base_url, tiers=TIERS, tenants=TENANTS)
        via_lc = [lc_call(lc, *call) for call, _ in CALLS]
        via_li = [li_call(li, *call) for call, _ in CALLS]
        streamed_lc = [lc_streamed(lc, *call) for call, _ in CALLS]
        streamed_li = [li_streamed(li, *call) for call, _ in CALLS]
        via_serve = {framework: served_calls(framework, server.base_url) for framework in ("langchain", "llamaindex")}
    for got, ((tier, tenant, _, _), (answer, chain, total)) in zip(via_lc, CALLS, strict=True):
        assert got["answer"] == answer
        assert [s["model"] for s in got["stages"] if s["status"] != "not_called"] == chain
        assert Decimal(got["cost_usd"]) == total
        assert got.get("tier") == (tier or TENANTS.get(tenant, {}).get("tier"))  # the tenant's tier when none named
    assert via_li == via_lc
    assert streamed_lc == via_lc and streamed_li == via_lc  # streaming runs the same tier's cascade
    assert via_serve["langchain"] == via_lc and via_serve["llamaindex"] == via_lc
    expected = 2 * sum((total for _, (_, _, total) in CALLS), Decimal(0))  # each call invoked, then streamed
    assert lc.cost_tracker.summary(decimals=True)["total_cost_usd"] == expected
    assert li.cost_tracker.summary(decimals=True)["total_cost_usd"] == expected


def test_an_unknown_tier_is_refused_naming_the_tiers():
    with replay_server(RECORDS) as server:
        lc, li = lc_model(server.base_url, tiers=TIERS), li_model(server.base_url, tiers=TIERS)
        message = "the call names tier 'gold'; this model's tiers are one of ['free', 'paid']"
        with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
            lc.invoke(AUTHOR, config={"metadata": {"tier": "gold"}})
        with pytest.raises(ConfigurationError, match="the call names tier 'gold'"):
            li.complete(AUTHOR, tier="gold")
        with pytest.raises(ConfigurationError, match=r"tenants\['acme'\]: tier 'gold' is not one of the tiers"):
            lc_model(server.base_url, tiers=TIERS, tenants={"acme": {"tier": "gold"}})
        with pytest.raises(ConfigurationError, match=r"tiers\['cheap'\]: no cascade costs at most 0.0001 per query"):
            lc_model(server.base_url, tiers={"cheap": {"budget": 0.0001}})
        assert server.request_count() == 0


# ------------------------------------------------------------------ a tenant's users sharing cached answers


def shared_models(base_url: str, tenants: dict[str, Any] | None) -> tuple[Any, Any, Budget, Budget]:
    """One model per adapter, each with its own answer cache and a budget of $1 a day per user."""
    budgets = [Budget(MemoryLedger(), [Limit("user", "1", period="day")]) for _ in range(2)]
    common = {"tenants": tenants, "max_output_tokens": {SMALL: 100, BIG: 100}}
    lc = lc_model(base_url, answer_cache=AnswerCache(embedder=HashingEmbedder()), budget=budgets[0], **common)
    li = li_model(base_url, answer_cache=AnswerCache(embedder=HashingEmbedder()), budget=budgets[1], **common)
    return lc, li, budgets[0], budgets[1]


def spent(budget: Budget, tenant: str, user: str) -> Decimal:
    return budget.status(Scope(tenant, user))[0].spent_usd


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
def test_a_tenant_that_opts_in_shares_cached_answers_while_budgets_stay_per_user(adapter):
    call = lc_call if adapter == "langchain" else li_call
    first = cost(SMALL, 12, 3) + cost(BIG, 12, 4)
    with replay_server(RECORDS) as server:
        lc, li, lc_budget, li_budget = shared_models(server.base_url, {"acme": {"share_cache_within_tenant": True}})
        model, budget = (lc, lc_budget) if adapter == "langchain" else (li, li_budget)
        ann = call(model, None, "acme", "ann", AUTHOR)
        assert ann["answer"] == "George Eliot" and ann["cache_hit"] is None and server.request_count() == 2
        bob = call(model, None, "acme", "bob", AUTHOR)  # ann's answer, at no cost, no provider called
        assert bob["answer"] == "George Eliot" and bob["cache_hit"] is not None and Decimal(bob["cost_usd"]) == 0
        assert Decimal(bob["cache_hit"]["saved_usd"]) == first and server.request_count() == 2
        carol = call(model, None, "globex", "carol", AUTHOR)  # never across tenants
        assert carol["cache_hit"] is None and server.request_count() == 4
        bob_own = call(model, None, "acme", "bob", CAPITAL)  # bob's own question: charged to bob
        assert bob_own["cache_hit"] is None and server.request_count() == 6
        assert spent(budget, "acme", "ann") == first
        assert spent(budget, "acme", "bob") == cost(SMALL, 10, 3) + cost(BIG, 10, 2)
        assert spent(budget, "globex", "carol") == first
        ann_again = call(model, None, "acme", "ann", CAPITAL)  # and bob's answer serves ann
        assert ann_again["cache_hit"] is not None and server.request_count() == 6


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
def test_without_the_opt_in_each_user_has_their_own_cache(adapter):
    call = lc_call if adapter == "langchain" else li_call
    with replay_server(RECORDS) as server:
        lc, li, _, _ = shared_models(server.base_url, {"globex": {"share_cache_within_tenant": True}})
        model = lc if adapter == "langchain" else li
        assert call(model, None, "acme", "ann", AUTHOR)["cache_hit"] is None
        assert call(model, None, "acme", "bob", AUTHOR)["cache_hit"] is None  # acme did not opt in
        assert call(model, None, "acme", "ann", AUTHOR)["cache_hit"] is not None  # ann's own entry still serves her
        assert server.request_count() == 4


# ------------------------------------------------------------------ the command


@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_frugal_serve_tiers_file_and_keys_pick_each_callers_tier(framework, tmp_path, monkeypatch):
    """``frugal serve --tiers`` through ``main``: the key's tier, else its tenant's (the scorer and prices are
    the test's: the command would load the strategy's DistilBERT checkpoint)."""
    import uvicorn

    from shared_scorer.budget import SQLiteLedger
    from shared_scorer.cli import main

    module = importlib.import_module(f"frugal_{framework}.serve")
    build = module.serve_backend
    monkeypatch.setattr(module, "serve_backend", lambda *a, **kw: build(*a, scorer=scorer, prices=PRICES, **kw))
    answers: list[tuple[str | None, str]] = []

    def run(app: Any, host: str, port: int) -> None:  # instead of blocking: serve, ask, stop
        with serving(app) as base_url:
            for user, query in (("ann", AUTHOR), ("carol", AUTHOR), ("dan", CAPITAL)):
                client = openai.OpenAI(base_url=base_url, api_key=KEY_OF[user], max_retries=0, timeout=10)
                reply = client.chat.completions.create(model="f", messages=[{"role": "user", "content": query}])
                answers.append((reply.model_extra["frugal"].get("tier"), reply.choices[0].message.content))

    monkeypatch.setattr(uvicorn, "run", run)
    strategy().save(tmp_path / "strategy.json")
    (tmp_path / "keys.json").write_text(json.dumps(KEYS))
    (tmp_path / "tiers.json").write_text(json.dumps({"tiers": TIERS, "tenants": TENANTS}))
    ledger = tmp_path / "ledger.db"
    with replay_server(RECORDS) as replay:
        argv = ["serve", "--framework", framework, "--strategy", str(tmp_path / "strategy.json"),
                "--keys", str(tmp_path / "keys.json"), "--tiers", str(tmp_path / "tiers.json"),
                "--stages-base-url", replay.base_url, "--ledger", str(ledger)]  # fmt: skip
        assert main(argv) == 0
    assert answers == [("free", "Charles Dickens"), ("paid", "George Eliot"), (None, "Canberra")]
    spend: dict[str, Decimal] = {}
    for record in SQLiteLedger(ledger).records():
        spend[record.user] = spend.get(record.user, Decimal(0)) + record.cost_usd
    assert spend == {
        "ann": cost(SMALL, 12, 3),
        "carol": cost(SMALL, 12, 3) + cost(BIG, 12, 4),
        "dan": cost(SMALL, 10, 3) + cost(BIG, 10, 2),
    }
