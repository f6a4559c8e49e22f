"""``frugal serve`` for LangChain: a ``FrugalChatModel`` as the gateway's :class:`ServeBackend`.

What is framework-free (keys and scopes, request validation, the status of each failure, SSE, the wire
format) is in :mod:`shared_scorer.server.gateway`; this module only translates: OpenAI messages into
LangChain messages, ``tools``/``tool_choice`` through ``bind_tools``, the request's options into
``FrugalChatModel.ainvoke``/``astream`` keywords, and the answer into the gateway's reply types. Serve it
with ``shared_scorer.server.gateway.make_app(LangChainBackend(model), keys, budget)``, or
``frugal serve --framework langchain`` (``frugal-cascade[serve,langchain]``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from shared_scorer.adapters.tiers import parse_tiers, tier_chains
from shared_scorer.context import Scope
from shared_scorer.errors import ConfigurationError
from shared_scorer.outcome import ToolCall
from shared_scorer.server.gateway import ChatReply, ChatRequest, StageOptions, StreamEvent
from shared_scorer.server.wire import message_text

if TYPE_CHECKING:
    from frugal_langchain.chat_models import FrugalChatModel
    from shared_scorer.strategy import Strategy


def openai_stages(strategy: Strategy, chain: Sequence[str] = (), **stage_options: Any) -> dict[str, Any]:
    """One ``ChatOpenAI`` per provider model of ``strategy`` (of ``chain`` when given: every tier's), for
    ``FrugalChatModel.from_strategy``.

    ``stage_options`` are :class:`~shared_scorer.server.gateway.StageOptions` (``base_url``, ``api_key``,
    ``timeout_s``, ``max_retries``, ``max_tokens``); each stage also asks for usage on streams.
    """
    from langchain_openai import ChatOpenAI

    opts = StageOptions(**stage_options)
    return {
        model: ChatOpenAI(
            model=model,
            base_url=opts.base_url,
            api_key=opts.api_key,  # type: ignore[arg-type]
            timeout=opts.timeout_s,
            max_retries=opts.max_retries,
            max_tokens=cap,  # type: ignore[call-arg]
            stream_usage=True,
        )
        for model, cap in opts.caps(chain or strategy.chain).items()
    }


def serve_backend(strategy: Strategy, **options: Any) -> LangChainBackend:
    """What ``frugal serve --framework langchain`` serves: ``strategy``'s ``FrugalChatModel`` over
    :func:`openai_stages`; the :class:`StageOptions` keywords build the stages, the others (budget,
    cost_tracker, answer_cache, ...) go to ``from_strategy``."""
    from frugal_langchain.chat_models import FrugalChatModel

    stage_options, model_options = StageOptions.split(options)
    chain = tier_chains(strategy, parse_tiers(model_options.get("tiers")))  # every tier's models
    stages = openai_stages(strategy, chain, **vars(stage_options))
    return LangChainBackend(FrugalChatModel.from_strategy(strategy, stages, **model_options))


class LangChainBackend:
    """A :class:`~shared_scorer.server.gateway.ServeBackend` over a ``FrugalChatModel``: the request's
    scope goes in ``config["metadata"]``, ``max_tokens``/``temperature``/``stop`` as call keywords."""

    def __init__(self, model: FrugalChatModel) -> None:
        self.model = model
        self.name = str(getattr(model, "model_name", None) or "frugal-cascade")

    def _call(self, request: ChatRequest, scope: Scope) -> tuple[Any, list[Any], dict[str, Any]]:
        """The runnable (tools bound), the LangChain messages and the call's keywords."""
        from langchain_core.messages import convert_to_messages

        try:
            messages = convert_to_messages(request.messages)
        except Exception as exc:
            raise ConfigurationError(f"'messages' could not be read: {exc}") from None
        runnable: Any = self.model
        if request.tools:
            runnable = self.model.bind_tools(request.tools, tool_choice=request.tool_choice)
        metadata = {"tenant": scope.tenant, "user": scope.user}
        if request.tier is not None:
            metadata["tier"] = request.tier
        options: dict[str, Any] = {"config": {"metadata": metadata}}
        for key in ("max_tokens", "temperature", "stop"):
            if getattr(request, key) is not None:
                options[key] = getattr(request, key)
        return runnable, messages, options

    async def complete(self, request: ChatRequest, scope: Scope) -> ChatReply:
        runnable, messages, options = self._call(request, scope)
        message = await runnable.ainvoke(messages, **options)
        metadata = message.response_metadata or {}
        usage = message.usage_metadata or {}
        calls = tuple(ToolCall(c["name"], c["args"], c.get("id")) for c in message.tool_calls or [])
        return ChatReply(
            message_text(message.content),
            calls,
            (int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
            metadata.get("model_name"),
            metadata.get("frugal"),
        )

    async def stream(self, request: ChatRequest, scope: Scope) -> AsyncIterator[StreamEvent]:
        runnable, messages, options = self._call(request, scope)
        usage: dict[str, Any] = {}
        model, trail, text = None, None, ""
        async for chunk in runnable.astream(messages, **options):
            metadata = chunk.response_metadata or {}
            model = metadata.get("model_name") or model
            trail = metadata.get("frugal", trail)
            for key, count in (chunk.usage_metadata or {}).items():  # chunks carry usage deltas
                usage[key] = usage.get(key, 0) + count if isinstance(count, int) else count
            piece = message_text(chunk.content)
            text += piece
            yield StreamEvent(piece, model)
        tokens = (int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))
        yield StreamEvent(reply=ChatReply(text, (), tokens, model, trail))
