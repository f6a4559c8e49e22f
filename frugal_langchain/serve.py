"""``frugal serve``: the cascade behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Any OpenAI client, in any language, can then call a saved strategy. Each API key maps to a budget scope
(tenant, and optionally user; a request's ``user`` field names the user otherwise); a request without a
valid key is refused with 401. A stage the budget cannot afford ends the call with 429 (``code:
budget_exceeded``, the message naming the limit) unless an answer was already in hand. Streaming is
Server-Sent Events, as OpenAI sends them. Needs ``starlette`` and ``uvicorn`` (``frugal-cascade[serve]``)
and the LangChain adapter, all imported only when the server is built.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_scorer.errors import CascadeError, ConfigurationError, FrugalError
from shared_scorer.hooks import BudgetExceeded, Scope

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from shared_scorer.budget import Budget

ModelFactory = Callable[["Budget | None"], Any]


def load_keys(path: str | Path) -> dict[str, Scope]:
    """Read a keys file: ``{"KEY": {"tenant": "acme", "user": "svc"}, ...}`` (``user`` optional), or the same
    object under ``"keys"``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"keys file {str(path)!r}: cannot read it as JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("keys"), dict):
        data = data["keys"]
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f"keys file {str(path)!r}: expected an object mapping keys to {{'tenant': ...}}")
    return {key: _scope(value, f"keys file {str(path)!r}, key {key[:4]}...") for key, value in data.items()}


def _scope(value: object, where: str) -> Scope:
    if isinstance(value, Scope):
        return value
    if isinstance(value, str):
        return Scope(tenant=value)
    if isinstance(value, Mapping) and isinstance(value.get("tenant"), str):
        user = value.get("user")
        return Scope(tenant=value["tenant"], user=user if isinstance(user, str) else "default")
    raise ConfigurationError(f"{where}: expected {{'tenant': str, 'user': str (optional)}}, got {value!r}")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> Response:
    from starlette.responses import JSONResponse

    body = {"error": {"message": message, "type": type_, "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else repr(v)))


def make_app(
    model_factory: ModelFactory, keys: Mapping[str, Scope | Mapping[str, str] | str], budget: Budget | None = None
) -> Starlette:
    """An ASGI app serving ``model_factory(budget)`` (a ``FrugalChatModel``) to the holders of ``keys``.

    Example::

        app = make_app(lambda budget: FrugalChatModel(stages=..., scorer=..., budget=budget),
                       {"sk-acme": {"tenant": "acme"}}, Budget("ledger.db", [Limit("tenant", "50")]))
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    from langchain_core.messages import convert_to_messages
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    model = model_factory(budget)
    scopes = {_digest(key): _scope(value, f"key {key[:4]}...") for key, value in keys.items()}
    if not scopes:
        raise ConfigurationError("frugal serve needs at least one API key")
    name = str(getattr(model, "model_name", "frugal-cascade"))

    def authorise(request: Request) -> Scope | None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return scopes.get(_digest(token)) if token else None

    async def completions(request: Request) -> Response:
        scope = authorise(request)
        if scope is None:
            return _error(401, "Missing or invalid API key.", "invalid_request_error", "invalid_api_key")
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
                raise ValueError("'messages' must be a non-empty list")
            messages = convert_to_messages(body["messages"])
        except Exception as exc:
            return _error(400, f"Invalid request body: {exc}", "invalid_request_error", None, "messages")
        user = body.get("user") if scope.user == "default" and isinstance(body.get("user"), str) else scope.user
        config = {"metadata": {"tenant": scope.tenant, "user": user}}
        options = {k: body[k] for k in ("temperature", "stop") if body.get(k) is not None}
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        reply_id, created = f"chatcmpl-frugal-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            chunks = model.astream(messages, config=config, **options).__aiter__()
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                first = None
            except FrugalError as exc:
                return _failure(exc)
            events = _events(first, chunks, reply_id, created, name)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            message = await model.ainvoke(messages, config=config, **options)
        except FrugalError as exc:
            return _failure(exc)
        return JSONResponse(_completion(message, reply_id, created, name))

    async def models(request: Request) -> Response:
        if authorise(request) is None:
            return _error(401, "Missing or invalid API key.", "invalid_request_error", "invalid_api_key")
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "frugal"}]})

    routes = [Route("/v1/chat/completions", completions, methods=["POST"]), Route("/v1/models", models)]
    app = Starlette(routes=routes)
    app.state.model = model
    app.state.budget = budget
    return app


def _failure(exc: FrugalError) -> Response:
    if isinstance(exc, BudgetExceeded):
        return _error(429, str(exc), "insufficient_quota", "budget_exceeded", exc.limit)
    if isinstance(exc, CascadeError):
        return _error(502, str(exc), "api_error", "all_stages_failed")
    return _error(500, str(exc), "api_error", type(exc).__name__)


def _completion(message: Any, reply_id: str, created: int, name: str) -> dict[str, Any]:
    metadata = dict(message.response_metadata or {})
    usage = message.usage_metadata or {}
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": message.content if isinstance(message.content, str) else "",
    }
    if message.tool_calls:
        reply["tool_calls"] = [
            {"id": c.get("id") or f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["args"])}}
            for i, c in enumerate(message.tool_calls)
        ]  # fmt: skip
    return {
        "id": reply_id,
        "object": "chat.completion",
        "created": created,
        "model": metadata.get("model_name") or name,
        "choices": [{"index": 0, "message": reply, "finish_reason": "tool_calls" if message.tool_calls else "stop"}],
        "usage": {
            "prompt_tokens": usage.get("input_tokens", 0),
            "completion_tokens": usage.get("output_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
        },
        "frugal": _jsonable(metadata.get("frugal")),
    }


async def _events(first: Any, rest: AsyncIterator[Any], reply_id: str, created: int, name: str) -> AsyncIterator[str]:
    """OpenAI ``chat.completion.chunk`` events; the last one carries the finish reason, usage and trail."""
    model_name = name
    usage: dict[str, Any] = {}
    trail: Any = None

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    chunk = first
    try:
        while chunk is not None:
            metadata = chunk.response_metadata or {}
            model_name = metadata.get("model_name") or model_name
            trail = metadata.get("frugal", trail)
            for name_, count in (chunk.usage_metadata or {}).items():  # chunks carry usage deltas
                usage[name_] = usage.get(name_, 0) + count if isinstance(count, int) else count
            if isinstance(chunk.content, str) and chunk.content:
                yield event({"content": chunk.content})
            chunk = await rest.__anext__()
    except StopAsyncIteration:
        pass
    except FrugalError as exc:  # mid-stream: the status line is out, so report it in the stream
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'api_error'}})}\n\n"
        return
    totals = {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }
    yield event({}, "stop", usage=totals, frugal=_jsonable(trail))
    yield "data: [DONE]\n\n"
