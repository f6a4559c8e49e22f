"""``frugal serve`` for LlamaIndex: a ``FrugalLLM`` as the gateway's :class:`ServeBackend`.

The twin of ``frugal_langchain.serve``: what is framework-free (keys and scopes, request validation, the
status of each failure, SSE, the wire format) is in :mod:`shared_scorer.server.gateway`; this module only
translates: OpenAI messages into LlamaIndex ``ChatMessage`` s, OpenAI function tools into tools whose
parameters are the request's JSON schema, the request's options and scope into ``FrugalLLM.achat`` /
``astream_chat`` keywords, and the answer into the gateway's reply types. Serve it with
``shared_scorer.server.gateway.make_app(LlamaIndexBackend(llm), keys, budget)``, or
``frugal serve --framework llamaindex`` (``frugal-cascade[serve,llamaindex]``).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llama_index.core.tools import BaseTool, ToolMetadata, ToolOutput

from shared_scorer.adapters.tiers import parse_tiers, tier_chains
from shared_scorer.context import Scope
from shared_scorer.errors import ConfigurationError
from shared_scorer.outcome import ToolCall
from shared_scorer.server.gateway import ChatReply, ChatRequest, StageOptions, StreamEvent

if TYPE_CHECKING:
    from llama_index.core.base.llms.types import ChatResponse

    from frugal_llamaindex.llms import FrugalLLM
    from shared_scorer.strategy import Strategy


def openai_like_stages(strategy: Strategy, chain: Sequence[str] = (), **stage_options: Any) -> dict[str, Any]:
    """One ``OpenAILike`` per provider model of ``strategy`` (of ``chain`` when given: every tier's), for
    ``FrugalLLM.from_strategy``.

    ``stage_options`` are :class:`~shared_scorer.server.gateway.StageOptions`, as for
    ``frugal_langchain.serve.openai_stages``; ``FrugalLLM`` asks the stages for usage on streams.
    """
    from llama_index.llms.openai_like import OpenAILike

    opts = StageOptions(**stage_options)
    return {
        model: OpenAILike(
            model=model,
            api_base=opts.base_url,
            api_key=opts.api_key,
            is_chat_model=True,
            is_function_calling_model=True,
            timeout=opts.timeout_s,
            max_retries=opts.max_retries,
            max_tokens=cap,
        )
        for model, cap in opts.caps(chain or strategy.chain).items()
    }


def serve_backend(strategy: Strategy, **options: Any) -> LlamaIndexBackend:
    """What ``frugal serve --framework llamaindex`` serves: ``strategy``'s ``FrugalLLM`` over
    :func:`openai_like_stages`, with ``options`` split as in ``frugal_langchain.serve.serve_backend``."""
    from frugal_llamaindex.llms import FrugalLLM

    stage_options, model_options = StageOptions.split(options)
    chain = tier_chains(strategy, parse_tiers(model_options.get("tiers")))  # every tier's models
    stages = openai_like_stages(strategy, chain, **vars(stage_options))
    return LlamaIndexBackend(FrugalLLM.from_strategy(strategy, stages, **model_options))


@dataclass
class _SchemaMetadata(ToolMetadata):
    """A tool's metadata whose parameters are a JSON schema as sent (not a pydantic model)."""

    schema: dict[str, Any] = field(default_factory=dict)

    def get_parameters_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.schema)  # a copy: OpenAI's client edits the dict it is given


class RequestTool(BaseTool):
    """An OpenAI function tool of a request: the stages may call it; it is never run here."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        function = spec["function"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        self._metadata = _SchemaMetadata(
            description=function.get("description") or function["name"], name=function["name"], schema=parameters
        )

    @property
    def metadata(self) -> ToolMetadata:
        return self._metadata

    def __call__(self, input: Any) -> ToolOutput:  # BaseTool's signature
        raise ConfigurationError(f"tool {self._metadata.name!r} is the client's: frugal serve never runs it")


class LlamaIndexBackend:
    """A :class:`~shared_scorer.server.gateway.ServeBackend` over a ``FrugalLLM``: the request's scope goes
    in the ``tenant=``/``user=`` keywords, ``max_tokens``/``temperature``/``stop`` as call keywords, a
    ``required`` or named ``tool_choice`` as ``tool_required=True`` (with the named choice sent as is)."""

    def __init__(self, llm: FrugalLLM) -> None:
        self.llm = llm
        self.name = str(getattr(llm, "model_name", None) or "frugal-cascade")

    def _call(self, request: ChatRequest, scope: Scope) -> tuple[list[Any], dict[str, Any]]:
        """The LlamaIndex messages and the call's keywords."""
        from llama_index.llms.openai.utils import from_openai_message_dicts

        try:
            messages = from_openai_message_dicts(request.messages)
        except Exception as exc:
            raise ConfigurationError(f"'messages' could not be read: {exc}") from None
        kwargs: dict[str, Any] = {"tenant": scope.tenant, "user": scope.user}
        if request.tier is not None:
            kwargs["tier"] = request.tier
        for key in ("max_tokens", "temperature", "stop"):
            if getattr(request, key) is not None:
                kwargs[key] = getattr(request, key)
        if request.tools:
            kwargs["tools"] = [RequestTool(spec) for spec in request.tools]
            choice = request.tool_choice
            if choice == "required" or isinstance(choice, dict):
                kwargs["tool_required"] = True
            if isinstance(choice, dict):
                kwargs["tool_choice"] = choice
        return messages, kwargs

    def _reply(self, response: ChatResponse, tools: bool) -> ChatReply:
        extra = response.additional_kwargs or {}
        calls: tuple[ToolCall, ...] = ()
        if tools:
            selections = self.llm.get_tool_calls_from_response(response, error_on_no_tool_call=False)
            calls = tuple(ToolCall(s.tool_name, s.tool_kwargs, s.tool_id) for s in selections)
        return ChatReply(
            response.message.content or "",
            calls,
            (int(extra.get("prompt_tokens") or 0), int(extra.get("completion_tokens") or 0)),
            extra.get("model_name"),
            extra.get("frugal"),
        )

    async def complete(self, request: ChatRequest, scope: Scope) -> ChatReply:
        messages, kwargs = self._call(request, scope)
        return self._reply(await self.llm.achat(messages, **kwargs), bool(request.tools))

    async def stream(self, request: ChatRequest, scope: Scope) -> AsyncIterator[StreamEvent]:
        messages, kwargs = self._call(request, scope)
        async for response in await self.llm.astream_chat(messages, **kwargs):
            closing = "frugal" in (response.additional_kwargs or {})  # the last one: usage, model and trail
            reply = self._reply(response, bool(request.tools)) if closing else None
            yield StreamEvent(response.delta or "", reply=reply)
