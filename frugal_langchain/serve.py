"""``frugal serve`` for LangChain: a saved strategy's ``FrugalChatModel`` behind the OpenAI-compatible endpoint.

What is framework-free (keys and scopes, request validation, the status of each failure, the wire format)
is in :mod:`shared_scorer.server.gateway` and :mod:`shared_scorer.server.wire`; this module turns a request
into ``FrugalChatModel`` calls (messages, tools, ``response_format``) and its answer into a reply. Needs
``starlette`` and ``uvicorn`` (``frugal-cascade[serve]``), imported only when the server is built.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from shared_scorer.context import Scope
from shared_scorer.errors import ConfigurationError
from shared_scorer.server.gateway import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_STAGE_RETRIES,
    DEFAULT_STAGE_TIMEOUT_S,
    END,
    Raised,
    Refused,
    ServeCall,
    buffered_events,
    error_response,
    failure_body,
    failure_response,
    jsonable,
    key_digest,
    parse_request,
    read_json,
    scope_of,
    start_reading,
)
from shared_scorer.server.wire import Reply, ToolCall, chunk_body, completion_body, error_body, message_text, usage_body
from shared_scorer.strategy import split_cap

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from shared_scorer.budget import Budget
    from shared_scorer.strategy import Strategy

ModelFactory = Callable[["Budget | None"], Any]


def openai_stages(
    strategy: Strategy,
    *,
    base_url: str,
    api_key: str,
    timeout_s: float = DEFAULT_STAGE_TIMEOUT_S,
    max_retries: int = DEFAULT_STAGE_RETRIES,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """One ``ChatOpenAI`` per provider model of ``strategy``, for ``FrugalChatModel.from_strategy``.

    Each asks for usage on streams, gives up after ``timeout_s`` seconds and ``max_retries`` retries (so a
    hanging provider escalates instead of holding the request). ``max_tokens`` caps the models the strategy
    leaves uncapped; a ``model@N`` entry keeps its learned cap ``N``.
    """
    from langchain_openai import ChatOpenAI

    uncapped = {split_cap(entry)[0] for entry in strategy.chain if split_cap(entry)[1] is None}
    return {
        model: ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=api_key,  # type: ignore[arg-type]
            timeout=timeout_s,
            max_retries=max_retries,
            max_tokens=max_tokens if model in uncapped else None,  # type: ignore[call-arg]
            stream_usage=True,
        )
        for model in dict.fromkeys(strategy.provider_models)
    }


def make_app(
    model_factory: ModelFactory,
    keys: Mapping[str, Scope | Mapping[str, str] | str],
    budget: Budget | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """An ASGI app serving ``model_factory(budget)`` (a ``FrugalChatModel``) to the holders of ``keys``.

    ``max_body_bytes`` bounds a request body (413 above it).

    Example::

        app = make_app(lambda budget: FrugalChatModel(stages=..., scorer=..., budget=budget),
                       {"sk-acme": {"tenant": "acme"}}, Budget("ledger.db", [Limit("tenant", "50")]))
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    from langchain_core.messages import convert_to_messages
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    if max_body_bytes < 1:
        raise ConfigurationError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    model = model_factory(budget)
    scopes = {key_digest(key): scope_of(value, f"key {key[:4]}...") for key, value in keys.items()}
    if not scopes:
        raise ConfigurationError("frugal serve needs at least one API key")
    name = str(getattr(model, "model_name", "frugal-cascade"))
    unauthorised = error_body("Missing or invalid API key.", "invalid_request_error", "invalid_api_key")

    def authorise(request: Request) -> Scope | None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return scopes.get(key_digest(token)) if token else None

    async def completions(request: Request) -> Response:
        scope = authorise(request)
        if scope is None:
            return error_response(401, unauthorised)
        try:
            call = parse_request(await read_json(request, max_body_bytes), scope, convert_to_messages)
        except Refused as refused:
            return refused.response()
        runnable = _runnable(model, call)
        reply_id, created = f"chatcmpl-frugal-{uuid.uuid4().hex[:24]}", int(time.time())
        if call.stream and not call.tools:  # the last stage streams live
            queue = start_reading(runnable.astream(call.messages, config=call.config, **call.options))
            first = await queue.get()
            if isinstance(first, Raised):
                return failure_response(first.error)
            events = _live_events(first, queue, reply_id, created, name)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            message = await runnable.ainvoke(call.messages, config=call.config, **call.options)
        except Exception as exc:
            return failure_response(exc)
        reply, call_ids = _reply(message, call.schema_name)
        answered_by = (message.response_metadata or {}).get("model_name") or name
        trail = jsonable((message.response_metadata or {}).get("frugal"))
        common: dict[str, Any] = {
            "completion_id": reply_id,
            "model": answered_by,
            "created": created,
            "call_ids": call_ids,
        }
        if not call.stream:
            return JSONResponse({**completion_body(reply, **common), "frugal": trail})
        return StreamingResponse(buffered_events(reply, common, trail), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        if authorise(request) is None:
            return error_response(401, unauthorised)
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "frugal"}]})

    routes = [Route("/v1/chat/completions", completions, methods=["POST"]), Route("/v1/models", models)]
    app = Starlette(routes=routes)
    app.state.model = model
    app.state.budget = budget
    return app


def _runnable(model: Any, call: ServeCall) -> Any:
    """``model`` with the request's tools bound (a json_schema answer is a forced function call)."""
    if call.tools:
        return model.bind_tools(call.tools, tool_choice=call.tool_choice)
    return model


def _reply(message: Any, schema_name: str | None) -> tuple[Reply, list[str]]:
    """The cascade's answer as a wire :class:`Reply` (a json_schema answer as the forced call's arguments)."""
    usage = message.usage_metadata or {}
    tokens = (int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))
    text = message_text(message.content)
    calls = list(message.tool_calls or [])
    if schema_name is not None:
        args = next((c["args"] for c in calls if c["name"] == schema_name), None)
        return Reply(json.dumps(args) if args is not None else text, usage=tokens), []
    tool_calls = tuple(ToolCall(c["name"], json.dumps(c["args"])) for c in calls)
    call_ids = [c.get("id") or f"call_{i}" for i, c in enumerate(calls)]
    return Reply(text if text or not tool_calls else None, tool_calls, usage=tokens), call_ids


async def _live_events(
    first: Any, queue: asyncio.Queue[Any], reply_id: str, created: int, name: str
) -> AsyncIterator[str]:
    """OpenAI ``chat.completion.chunk`` events; the last one carries the finish reason, usage and trail."""
    model_name = name
    usage: dict[str, Any] = {}
    trail: Any = None

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = chunk_body(delta, completion_id=reply_id, model=model_name, created=created, finish_reason=finish)
        return f"data: {json.dumps({**body, **extra})}\n\n"

    yield event({"role": "assistant", "content": ""})
    item = first
    while item is not END:
        if isinstance(item, Raised):  # mid-stream: the status line is out, so report it in the stream
            yield f"data: {json.dumps(failure_body(item.error)[1])}\n\n"
            return
        metadata = item.response_metadata or {}
        model_name = metadata.get("model_name") or model_name
        trail = metadata.get("frugal", trail)
        for key, count in (item.usage_metadata or {}).items():  # chunks carry usage deltas
            usage[key] = usage.get(key, 0) + count if isinstance(count, int) else count
        text = message_text(item.content)
        if text:
            yield event({"content": text})
        item = await queue.get()
    totals = usage_body((int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))))
    yield event({}, "stop", usage=totals, frugal=jsonable(trail))
    yield "data: [DONE]\n\n"
