"""Both adapters hand the scorer the same context: system prompt, earlier turns, tool results and the
caller's profile (given per call, or per tenant in ``tenant_profiles``)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import MockLLM

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer.errors import ConfigurationError
from shared_scorer.scoring.base import ScoreRequest

ADAPTERS = [FrugalChatModel, FrugalLLM]
SYSTEM = "Answer with a bare name."
QUERY = "Who wrote Middlemarch?"


def _model(adapter: type, seen: list[ScoreRequest], **options: Any) -> Any:
    def scorer(request: ScoreRequest) -> float:
        seen.append(request)
        return 1.0

    if adapter is FrugalChatModel:
        stage: Any = GenericFakeChatModel(messages=iter([AIMessage(content="George Eliot")] * 8))
    else:
        stage = MockLLM()
    name = type(stage).__name__
    return adapter(stages=[stage], scorer=scorer, prices={name: (1, 1)}, return_policy="best", **options)


def _chat(llm: Any, turns: list[tuple[str, str]], profile: Any = None, tenant: str | None = None) -> None:
    if isinstance(llm, FrugalChatModel):
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        messages: list[Any] = []
        for role, text in turns:
            if role == "tool":
                messages.append(ToolMessage(content=text, tool_call_id="c1"))
            elif role == "call":
                messages.append(AIMessage(content="", tool_calls=[{"name": "search", "args": {"q": text}, "id": "c1"}]))
            else:
                messages.append(kinds[role](content=text))
        metadata = {k: v for k, v in (("frugal_profile", profile), ("tenant", tenant)) if v is not None}
        llm.invoke(messages, config={"metadata": metadata})
        return
    roles = {"call": MessageRole.ASSISTANT}
    chat = []
    for role, text in turns:
        if role == "call":
            extra = {"tool_calls": [{"id": "c1", "function": {"name": "search", "arguments": f'{{"q": "{text}"}}'}}]}
            chat.append(ChatMessage(role=roles[role], content="", additional_kwargs=extra))
        else:
            chat.append(ChatMessage(role=MessageRole(role), content=text))
    kwargs = {k: v for k, v in (("frugal_profile", profile), ("tenant", tenant)) if v is not None}
    llm.chat(chat, **kwargs)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_system_history_and_per_call_profile_reach_the_scorer(adapter):
    seen: list[ScoreRequest] = []
    llm = _model(adapter, seen)
    turns = [("system", SYSTEM), ("user", "hi"), ("assistant", "hello"), ("user", QUERY)]
    _chat(llm, turns, profile={"tier": "gold", "locale": "en-GB"})
    (request,) = seen
    assert (request.query, request.system, request.history, request.tool_results, request.profile) == (
        QUERY,
        SYSTEM,
        ("user: hi", "assistant: hello"),
        (),
        "locale: en-GB; tier: gold",
    )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_tool_results_after_the_query_reach_the_scorer(adapter):
    seen: list[ScoreRequest] = []
    llm = _model(adapter, seen)
    _chat(llm, [("user", QUERY), ("call", "Middlemarch"), ("tool", "Middlemarch, a novel by George Eliot")])
    (request,) = seen
    assert request.query == QUERY and request.system == "" and request.profile == ""
    assert request.history == ("assistant: \n<tool_call search {'q': 'Middlemarch'}>",)
    assert request.tool_results == ("Middlemarch, a novel by George Eliot",)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_tenant_profiles_apply_unless_the_call_gives_its_own(adapter):
    seen: list[ScoreRequest] = []
    llm = _model(adapter, seen, tenant_profiles={"acme": "plan: gold", "globex": {"plan": "free"}})
    _chat(llm, [("user", QUERY)], tenant="acme")
    _chat(llm, [("user", QUERY)], tenant="globex")
    _chat(llm, [("user", QUERY)], tenant="initech")
    _chat(llm, [("user", QUERY)], tenant="acme", profile="plan: trial")
    assert [r.profile for r in seen] == ["plan: gold", "plan: free", "", "plan: trial"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_profile_of_the_wrong_type_is_refused(adapter):
    llm = _model(adapter, [])
    with pytest.raises(ConfigurationError, match="profile must be a string or a mapping, got list"):
        _chat(llm, [("user", QUERY)], profile=["gold"])
