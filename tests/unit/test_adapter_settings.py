"""Both adapters take their settings from one model (``CascadeSettings``) and honour them the same way."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.llms import MockLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from pydantic import Field

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer.adapters.settings import CascadeSettings
from shared_scorer.cache import AnswerCache, HashingEmbedder
from shared_scorer.errors import ConfigurationError
from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

SETTINGS = [
    "stages",
    "scorer",
    "thresholds",
    "gates",
    "prices",
    "return_policy",
    "tool_call_policy",
    "cost_tracker",
    "model_name",
    "temperature",
    "max_tokens",
    "tenant",
    "user",
    "tenant_profiles",
    "answer_cache",
    "budget",
    "on_budget",
    "strategy_id",
    "max_output_tokens",
    "request_logprobs",
    "tiers",
    "tenants",
]
ADAPTERS = [FrugalChatModel, FrugalLLM]


class RecordingChat(GenericFakeChatModel):
    """A LangChain stage that remembers the keywords of every call."""

    seen: list[dict[str, Any]] = Field(default_factory=list)

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.seen.append(kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="ok"))])


class RecordingLLM(MockLLM):
    """A LlamaIndex stage that remembers the keywords of every call."""

    seen: list[dict[str, Any]] = Field(default_factory=list)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.seen.append(kwargs)
        return CompletionResponse(text="ok")


def _model(adapter: type, stage: Any, **options: Any) -> Any:
    name = type(stage).__name__
    return adapter(stages=[stage], scorer=lambda q, a: 1.0, prices={name: (1, 1)}, **options)


def _stage(adapter: type) -> Any:
    return RecordingChat(messages=iter([])) if adapter is FrugalChatModel else RecordingLLM()


def _call(llm: Any, **kwargs: Any) -> str:
    if isinstance(llm, FrugalChatModel):
        return str(llm.invoke("hi", **kwargs).content)
    return str(llm.complete("hi", **kwargs).text)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_both_adapters_declare_the_settings_once_with_descriptions(adapter):
    shared = CascadeSettings.model_fields
    assert sorted(shared) == sorted(SETTINGS)
    for name in SETTINGS:
        field = adapter.model_fields[name]
        assert field.description and field.description == shared[name].description, name
        assert field.exclude == shared[name].exclude, name
    assert adapter.model_fields["model_name"].alias == "model"
    assert adapter.model_config["extra"] == "forbid" and adapter.model_config["populate_by_name"] is True
    # declared in the core only: neither adapter's own class body names a settings field
    assert not set(SETTINGS) & set(adapter.__annotations__)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hooks_and_trackers_are_not_serialised(adapter):
    cache = AnswerCache(embedder=HashingEmbedder())
    llm = _model(
        adapter, _stage(adapter), answer_cache=cache, budget=object(), tenant="acme", model="cheap-first", max_tokens=9
    )
    dumped = llm.model_dump()
    assert not {"answer_cache", "budget", "cost_tracker"} & set(dumped)
    assert dumped["tenant"] == "acme" and dumped["model_name"] == "cheap-first" and dumped["thresholds"] == []
    assert llm.answer_cache is cache and llm.model_name == "cheap-first"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_unknown_arguments_are_refused_with_the_nearest_name(adapter):
    with pytest.raises(ConfigurationError, match=r"unknown argument 'temprature' \(did you mean 'temperature'\?\)"):
        _model(adapter, _stage(adapter), temprature=0.2)
    with pytest.raises(ConfigurationError, match=r"stage 0 must be"):
        adapter(stages=[object()], scorer=lambda q, a: 1.0)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_temperature_and_max_tokens_are_sent_to_every_stage_call(adapter):
    stage = _stage(adapter)
    llm = _model(adapter, stage, temperature=0.3, max_tokens=50)
    assert llm.cascade.output_limits == [50]
    assert _call(llm) == "ok"
    assert {k: stage.seen[-1].get(k) for k in ("temperature", "max_tokens")} == {"temperature": 0.3, "max_tokens": 50}
    # a call's own keywords win; max_tokens is never more than the adapter's cap
    assert _call(llm, temperature=0.9, max_tokens=20) == "ok"
    assert {k: stage.seen[-1].get(k) for k in ("temperature", "max_tokens")} == {"temperature": 0.9, "max_tokens": 20}
    assert _call(llm, max_tokens=500) == "ok"
    assert stage.seen[-1].get("max_tokens") == 50
    # unset, nothing is sent
    plain_stage = _stage(adapter)
    _call(_model(adapter, plain_stage))
    assert "temperature" not in plain_stage.seen[-1] and "max_tokens" not in plain_stage.seen[-1]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_from_strategy_uses_the_adapters_stage_names(adapter):
    name = "RecordingChat" if adapter is FrugalChatModel else "RecordingLLM"
    point = FrontierPoint(chain=(name,), thresholds=(), accuracy=1.0, cost=0.0)
    strategy = Strategy(chain=(name,), thresholds=(), scorer="s", frontier=Frontier([point]), data_fingerprint="d")
    llm = adapter.from_strategy(strategy, {name: _stage(adapter)}, scorer=lambda q, a: 1.0, prices={name: (1, 1)})
    assert isinstance(llm, adapter) and llm.cascade.models == [name] and len(llm.strategy_id) == 16
    with pytest.raises(ConfigurationError, match=r"no model given for \['" + name):
        adapter.from_strategy(strategy, {}, scorer=lambda q, a: 1.0)
