"""Guardrails both adapters must hold on every path: scope, real cost on streams, bad input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import GenericFakeChatModel

from frugal_langchain import FrugalChatModel
from shared_scorer import ConfigurationError, CostTracker
from shared_scorer.cache import AnswerCache, HashingEmbedder

QUESTION = "What is my account number?"


class ScopeTracker(CostTracker):
    """A cost tracker that also remembers whom each call was charged to."""

    def __init__(self) -> None:
        super().__init__()
        self.scopes: list[tuple[str, str]] = []

    def record(self, result: Any) -> None:
        self.scopes.append((result.context.scope.tenant, result.context.scope.user))
        super().record(result)


def _cached_model(answers: list[str]) -> FrugalChatModel:
    return FrugalChatModel(
        stages=[GenericFakeChatModel(messages=iter(answers))],
        scorer=lambda q, a: 0.9,
        thresholds=[],
        prices={"GenericFakeChatModel": (1, 1)},
        answer_cache=AnswerCache(embedder=HashingEmbedder()),
        tenant="acme",
        cost_tracker=ScopeTracker(),
    )


def _text(chunks: list[Any]) -> str:
    return "".join(str(c.content) for c in chunks)


def test_stream_keeps_each_users_scope_in_the_answer_cache():
    llm = _cached_model(["ANN-PRIVATE 1234", "bob's own answer"])
    assert _text(list(llm.stream(QUESTION, config={"metadata": {"user": "ann"}}))) == "ANN-PRIVATE 1234"
    bob = list(llm.stream(QUESTION, config={"metadata": {"user": "bob"}}))
    assert _text(bob) == "bob's own answer"
    assert bob[-1].response_metadata["frugal"]["cache_hit"] is None
    # ann, asking again, is served her own cached answer
    again = list(llm.stream(QUESTION, config={"metadata": {"user": "ann"}}))
    assert _text(again) == "ANN-PRIVATE 1234" and again[-1].response_metadata["frugal"]["cache_hit"] is not None
    assert llm.cost_tracker.scopes == [("acme", "ann"), ("acme", "bob"), ("acme", "ann")]


async def test_astream_and_astream_events_keep_the_scope():
    llm = _cached_model(["ANN-PRIVATE 1234", "bob's own answer", "carol's"])
    ann = [c async for c in llm.astream(QUESTION, config={"metadata": {"user": "ann"}})]
    assert _text(ann) == "ANN-PRIVATE 1234"
    bob = [c async for c in llm.astream(QUESTION, config={"metadata": {"user": "bob"}})]
    assert _text(bob) == "bob's own answer"
    events = [e async for e in llm.astream_events(QUESTION, config={"metadata": {"user": "carol"}}, version="v2")]
    starts = [e for e in events if e["event"] == "on_chat_model_start"]
    root = starts[0]["run_id"]
    assert (
        "".join(
            e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream" and e["run_id"] == root
        )
        == "carol's"
    )
    assert [("frugal:stage=0" in e["tags"], e["parent_ids"][-1:]) for e in starts[1:]] == [(True, [root])]
    assert llm.cost_tracker.scopes == [("acme", "ann"), ("acme", "bob"), ("acme", "carol")]


def test_invoke_with_streaming_keeps_the_scope():
    llm = _cached_model(["ANN-PRIVATE 1234", "bob's own answer"])
    llm.streaming = True
    assert llm.invoke(QUESTION, config={"metadata": {"user": "ann"}}).content == "ANN-PRIVATE 1234"
    assert llm.invoke(QUESTION, config={"metadata": {"user": "bob"}}).content == "bob's own answer"


def test_frugal_cache_false_in_stream_config_skips_the_cache():
    llm = _cached_model(["first", "second"])
    list(llm.stream(QUESTION))
    again = list(llm.stream(QUESTION, config={"metadata": {"frugal_cache": False}}))
    assert _text(again) == "second"


class _Starts(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[tuple[UUID, UUID | None, list[str], dict[str, Any]]] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, tags=None, metadata=None, **kw):
        self.starts.append((run_id, parent_run_id, tags or [], metadata or {}))


def test_stream_stage_calls_are_child_runs_of_the_cascade_run():
    llm = FrugalChatModel(
        stages=[GenericFakeChatModel(messages=iter(["no"])), GenericFakeChatModel(messages=iter(["yes"]))],
        scorer=lambda q, a: 0.1,
        thresholds=[0.5],
        prices={"GenericFakeChatModel": (1, 1)},
        cost_tracker=ScopeTracker(),
    )
    handler = _Starts()
    assert _text(list(llm.stream(QUESTION, config={"callbacks": [handler], "metadata": {"user": "ann"}}))) == "yes"
    (root, parent, _, _), *children = handler.starts
    assert parent is None
    assert [(p, [t for t in tags if t.startswith("frugal:")], m.get("user")) for _, p, tags, m in children] == [
        (root, ["frugal:stage=0"], "ann"),
        (root, ["frugal:stage=1"], "ann"),
    ]
    assert llm.cost_tracker.scopes == [("default", "ann")]


# ---------------------------------------------------------------------- silent acceptance (item 10)


def _fake(*answers: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(answers or ["ok"]))


def _mock_llm() -> Any:
    from llama_index.core.llms import MockLLM

    return MockLLM()


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
def test_unknown_constructor_arguments_are_named(adapter):
    from frugal_llamaindex import FrugalLLM

    if adapter == "langchain":
        cls, stage, prices = FrugalChatModel, _fake(), {"GenericFakeChatModel": (1, 1)}
    else:
        cls, stage, prices = FrugalLLM, _mock_llm(), {"MockLLM": (1, 1)}
    with pytest.raises(ConfigurationError, match=r"unknown argument 'return_polcy' \(did you mean 'return_policy'\?\)"):
        cls(stages=[stage], scorer=lambda q, a: 1.0, prices=prices, return_polcy="best")
    with pytest.raises(ConfigurationError, match="budget_usd"):
        cls(stages=[stage], scorer=lambda q, a: 1.0, prices=prices, budget_usd=1)
    model = cls(stages=[stage], scorer=lambda q, a: 1.0, prices=prices, return_policy="best")
    assert model.return_policy == "best"


def _strategy(tmp_path: Any, chain: tuple[str, ...]) -> Any:
    from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

    point = FrontierPoint(chain, (0.5,) * (len(chain) - 1), accuracy=0.9, cost=0.01, reach=(1.0,) * len(chain))
    return Strategy.from_frontier(Frontier([point]), scorer="scorer", data_fingerprint="f" * 64)


def test_from_strategy_rejects_unknown_options_and_a_stage_keyed_to_another_model(tmp_path):
    from langchain_openai import ChatOpenAI

    strategy = _strategy(tmp_path, ("gpt-4o-mini", "gpt-4o"))
    right = {m: ChatOpenAI(model=m, api_key="x") for m in ("gpt-4o-mini", "gpt-4o")}
    llm = FrugalChatModel.from_strategy(strategy, right, scorer=lambda q, a: 1.0)
    assert llm.cascade.models == ["gpt-4o-mini", "gpt-4o"]
    with pytest.raises(ConfigurationError, match="budget_usd"):
        FrugalChatModel.from_strategy(strategy, right, scorer=lambda q, a: 1.0, budget_usd=1)
    wrong = {**right, "gpt-4o": ChatOpenAI(model="gpt-4o-mini", api_key="x")}
    with pytest.raises(ConfigurationError, match=r"stages\['gpt-4o'\] is a client of 'gpt-4o-mini'"):
        FrugalChatModel.from_strategy(strategy, wrong, scorer=lambda q, a: 1.0)


class RecordingBudget:
    """A budget that grants everything and remembers each reservation's call context and amount."""

    def __init__(self) -> None:
        self.reserved: list[tuple[int | None, Decimal]] = []

    def reserve(self, context: Any, model: str, amount: Decimal) -> Any:
        from shared_scorer.protocols import Reservation

        self.reserved.append((context.max_output_tokens, amount))
        return Reservation(str(len(self.reserved)), amount, context.scope, model)

    def settle(self, reservation: Any, actual: Decimal) -> None:
        pass


def _frugal_llm(**options: Any) -> Any:
    from frugal_llamaindex import FrugalLLM

    return FrugalLLM(stages=[_mock_llm()], scorer=lambda q, a: 1.0, prices={"MockLLM": (1, 1)}, **options)


def test_llamaindex_rejects_unknown_per_call_keywords():
    from llama_index.core.base.llms.types import ChatMessage

    llm = _frugal_llm()
    messages = [ChatMessage(role="user", content="hi")]
    for call in (lambda: llm.chat(messages, temprature=0.1), lambda: llm.complete("hi", temprature=0.1)):
        with pytest.raises(ConfigurationError, match=r"unknown per-call keyword 'temprature'"):
            call()
    with pytest.raises(ConfigurationError, match=r"unknown per-call keyword 'seed'"):
        list(llm.stream_chat(messages, seed=3))
    # what LlamaIndex itself passes still works
    assert llm.chat(messages, temperature=0.1, max_tokens=8, tenant="t", user="u", frugal_cache=False).message.content


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
def test_per_call_max_tokens_bounds_the_reservation(adapter):
    budget = RecordingBudget()
    if adapter == "langchain":
        llm = FrugalChatModel(
            stages=[_fake("a", "b", "c")],
            scorer=lambda q, a: 1.0,
            prices={"GenericFakeChatModel": (1, 1)},
            budget=budget,
            max_output_tokens={"GenericFakeChatModel": 100},
        )
        call = lambda **kw: llm.invoke("hi", **kw)  # noqa: E731
    else:
        llm = _frugal_llm(budget=budget, max_output_tokens={"MockLLM": 100})
        call = lambda **kw: llm.complete("hi", **kw)  # noqa: E731
    call()
    call(max_tokens=7)
    call(max_tokens=700)  # never more than the stage's own limit
    assert budget.reserved == [(None, Decimal("0.000182")), (7, Decimal("0.000089")), (700, Decimal("0.000182"))]
    for bad in (-5, "abc", 2.5):
        with pytest.raises(ConfigurationError, match="max_tokens"):
            call(max_tokens=bad)
    assert len(budget.reserved) == 3


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
def test_the_adapters_max_tokens_reaches_every_stage_request(adapter):
    """``max_tokens=`` on either adapter is sent on every stage request (sync, async, streamed); a call's own
    ``max_tokens`` wins, never above the adapter's."""
    import asyncio

    from shared_scorer.server.testing import make_record, replay_server

    records = [make_record("hi", "hello", model=m, input_tokens=3, output_tokens=2) for m in ("small", "big")]
    with replay_server(records) as server:
        options: dict[str, Any] = {"scorer": lambda q, a: 0.0, "thresholds": [0.5], "max_tokens": 40}
        options["prices"] = {"small": (1, 2), "big": (3, 4)}
        if adapter == "langchain":
            from langchain_openai import ChatOpenAI

            stages = [
                ChatOpenAI(model=m, base_url=server.base_url, api_key="t", max_retries=0) for m in ("small", "big")
            ]
            llm: Any = FrugalChatModel(stages=stages, **options)
            calls = [
                lambda: llm.invoke("hi"),
                lambda: asyncio.run(llm.ainvoke("hi")),
                lambda: list(llm.stream("hi")),
                lambda: llm.invoke("hi", max_tokens=7),
            ]
        else:
            from llama_index.llms.openai_like import OpenAILike

            from frugal_llamaindex import FrugalLLM

            stages = [
                OpenAILike(model=m, api_base=server.base_url, api_key="t", is_chat_model=True, max_retries=0)
                for m in ("small", "big")
            ]
            llm = FrugalLLM(stages=stages, **options)
            calls = [
                lambda: llm.complete("hi"),
                lambda: asyncio.run(llm.acomplete("hi")),
                lambda: list(llm.stream_complete("hi")),
                lambda: llm.complete("hi", max_tokens=7),
            ]
        for call in calls:
            call()
        assert [(b.model, b.max_tokens) for b in server.bills] == [("small", 40), ("big", 40)] * 3 + [
            ("small", 7),
            ("big", 7),
        ]
        assert llm.cascade.output_limits == [40, 40]
