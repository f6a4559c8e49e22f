"""Guardrails both adapters must hold on every path: scope, real cost on streams, bad input."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import GenericFakeChatModel

from frugal_langchain import FrugalChatModel
from shared_scorer import CostTracker
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
