"""``frugal serve``: the cascade behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Any OpenAI client, in any language, can then call a saved strategy. Each API key maps to a scope (tenant,
and optionally user; a request's ``user`` field names the user otherwise): budgets, the answer cache and
the ledger all see that scope. Streaming is Server-Sent Events, as OpenAI sends them. ``tools``,
``tool_choice`` and ``response_format`` (``json_schema``: answered through a forced function call on every
stage, validated against the schema; ``json_object``: a plain answer) reach the cascade. A request's
``max_tokens`` only lowers each stage's own output cap. Needs ``starlette`` and ``uvicorn``
(``frugal-cascade[serve]``) and the LangChain adapter, all imported only when the server is built.

What a client sees when a request is not answered (OpenAI's error format; ``x-should-retry: false`` where
a retry would only pay again)::

    400 invalid_request_error  the body is not JSON, no messages, max_tokens not a positive integer, ...
    401 invalid_api_key        no key, or a key not in the keys file
    413 request_too_large      a body over max_body_bytes (1 MiB by default)
    422 all_stages_failed      every stage failed; "frugal" holds the trail (not retried)
    429 budget_exceeded        a limit would be crossed and no answer is in hand (not retried)
    503 ledger_unavailable     the budget ledger cannot be reached: budgets fail closed, no stage is called
    500 internal_error         anything else; the details are in the server's log only

A client that hangs up mid-stream does not stop the cascade: the rest of the stream is read, so that the
provider's cost is settled and recorded as on any other call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared_scorer.errors import CascadeError, ConfigurationError, LedgerError
from shared_scorer.hooks import BudgetExceeded, Scope
from shared_scorer.replay._protocol import (
    JSON,
    Reply,
    ToolCall,
    chunk_body,
    completion_body,
    error_body,
    message_text,
    stream_chunks,
    usage_body,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from shared_scorer.budget import Budget
    from shared_scorer.cache import AnswerCache
    from shared_scorer.strategy import Strategy

ModelFactory = Callable[["Budget | None"], Any]

logger = logging.getLogger("frugal.serve")

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (413 above it)."""
DEFAULT_STAGE_TIMEOUT_S = 60.0
"""Seconds one stage call may take before it counts as failed (and the query escalates)."""
DEFAULT_STAGE_RETRIES = 1
"""Retries of one stage call by its client (on a connection error, 408, 409, 429 or 5xx) before it fails."""

_NO_RETRY = {"x-should-retry": "false"}  # the OpenAI SDKs obey this header before looking at the status
_background: set[asyncio.Task[Any]] = set()  # streams still read after their client hung up


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

    from shared_scorer.caps import split_cap

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


def open_answer_cache(spec: str, *, semantic: bool = True) -> AnswerCache:
    """The answer cache ``--answer-cache`` names: a SQLite file path, or a Chroma server's
    ``http://HOST:PORT[/PREFIX]`` (``chroma://`` works too). Entries are scoped by tenant and user."""
    from shared_scorer.cache import AnswerCache, ChromaStore

    if spec.startswith(("http://", "https://", "chroma://")):
        parts = urlsplit(spec)
        prefix = parts.path.strip("/") or "frugal-cache"
        store: Any = ChromaStore(parts.hostname or "127.0.0.1", parts.port or 8000, prefix=prefix)
        return AnswerCache(store, semantic=semantic)
    if "://" in spec:
        raise ConfigurationError(f"answer cache {spec!r}: expected a SQLite file path or http://HOST:PORT (Chroma)")
    return AnswerCache(spec, semantic=semantic)


class _Refused(Exception):
    """A request refused before any stage is called."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param

    def response(self) -> Response:
        return _error(self.status, error_body(str(self), "invalid_request_error", self.code, self.param))


@dataclass
class _Call:
    """One request, validated: what to send to the cascade and how to answer."""

    messages: list[Any]
    config: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    schema_name: str | None = None
    """Set for ``response_format: json_schema``: the forced function whose arguments are the answer."""
    stream: bool = False


def _error(status: int, body: JSON, headers: Mapping[str, str] | None = None) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else repr(v)))


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
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    if max_body_bytes < 1:
        raise ConfigurationError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    model = model_factory(budget)
    scopes = {_digest(key): _scope(value, f"key {key[:4]}...") for key, value in keys.items()}
    if not scopes:
        raise ConfigurationError("frugal serve needs at least one API key")
    name = str(getattr(model, "model_name", "frugal-cascade"))
    unauthorised = error_body("Missing or invalid API key.", "invalid_request_error", "invalid_api_key")

    def authorise(request: Request) -> Scope | None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return scopes.get(_digest(token)) if token else None

    async def completions(request: Request) -> Response:
        scope = authorise(request)
        if scope is None:
            return _error(401, unauthorised)
        try:
            call = _parse(await _read_json(request, max_body_bytes), scope)
        except _Refused as refused:
            return refused.response()
        runnable = _runnable(model, call)
        reply_id, created = f"chatcmpl-frugal-{uuid.uuid4().hex[:24]}", int(time.time())
        if call.stream and not call.tools:  # the last stage streams live
            queue = _start(runnable.astream(call.messages, config=call.config, **call.options))
            first = await queue.get()
            if isinstance(first, _Raised):
                return _failure(first.error)
            events = _live_events(first, queue, reply_id, created, name)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            message = await runnable.ainvoke(call.messages, config=call.config, **call.options)
        except Exception as exc:
            return _failure(exc)
        reply, call_ids = _reply(message, call.schema_name)
        answered_by = (message.response_metadata or {}).get("model_name") or name
        trail = _jsonable((message.response_metadata or {}).get("frugal"))
        common: dict[str, Any] = {
            "completion_id": reply_id,
            "model": answered_by,
            "created": created,
            "call_ids": call_ids,
        }
        if not call.stream:
            return JSONResponse({**completion_body(reply, **common), "frugal": trail})
        return StreamingResponse(_buffered_events(reply, common, trail), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        if authorise(request) is None:
            return _error(401, unauthorised)
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "frugal"}]})

    routes = [Route("/v1/chat/completions", completions, methods=["POST"]), Route("/v1/models", models)]
    app = Starlette(routes=routes)
    app.state.model = model
    app.state.budget = budget
    return app


# ---------------------------------------------------------------------------- the request


async def _read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refused with 413 past ``limit`` bytes (declared or actually sent)."""
    too_large = f"The request body is larger than this server accepts ({limit} bytes)."
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise _Refused(400, "The Content-Length header is not a number.")
        if int(declared) > limit:
            raise _Refused(413, too_large, "request_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise _Refused(413, too_large, "request_too_large")
    try:
        return json.loads(data)
    except ValueError:
        raise _Refused(400, "The request body is not valid JSON.") from None


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Refused(400, f"'{key}' must be a positive integer, got {_shown(value)}.", "invalid_value", key)
    return value


def _parse(body: Any, scope: Scope) -> _Call:
    """Validate a chat-completions body; every problem is a 400 naming the field."""
    from langchain_core.messages import convert_to_messages

    if not isinstance(body, dict):
        raise _Refused(400, "The request body must be a JSON object.")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _Refused(400, "'messages' must be a non-empty list of messages.", param="messages")
    try:
        messages = convert_to_messages(raw)
    except Exception as exc:
        raise _Refused(400, f"'messages' could not be read: {exc}", param="messages") from None
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _Refused(400, f"'user' must be a string, got {_shown(user)}.", param="user")
    scope_user = user if scope.user == "default" and user else scope.user
    call = _Call(messages, {"metadata": {"tenant": scope.tenant, "user": scope_user}})
    limits = [v for v in (_positive_int(body, "max_completion_tokens"), _positive_int(body, "max_tokens")) if v]
    if limits:  # the cascade sends each stage the smaller of this and the stage's own output limit
        call.options["max_tokens"] = min(limits)
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise _Refused(400, f"'temperature' must be a number from 0 to 2, got {_shown(temperature)}.",
                           "invalid_value", "temperature")  # fmt: skip
        call.options["temperature"] = float(temperature)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _Refused(400, "'stop' must be a string or a list of strings.", "invalid_value", "stop")
        if stop:
            call.options["stop"] = stop
    if body.get("n") not in (None, 1):
        raise _Refused(400, f"'n' must be 1 (one answer per request), got {_shown(body['n'])}.", "invalid_value", "n")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _Refused(400, f"'stream' must be true or false, got {_shown(stream)}.", "invalid_value", "stream")
    call.stream = bool(stream)
    _parse_tools(body, call)
    return call


def _parse_tools(body: Mapping[str, Any], call: _Call) -> None:
    """``tools``, ``tool_choice`` and ``response_format`` into ``call``."""
    tools = body.get("tools")
    if tools is not None:
        valid = isinstance(tools, list) and all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools
        )  # fmt: skip
        if not valid:
            raise _Refused(400, "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                           "invalid_value", "tools")  # fmt: skip
    choice = body.get("tool_choice")
    named = isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str)
    if choice is not None and choice not in ("none", "auto", "required") and not named:
        message = '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", ...}.'
        raise _Refused(400, message, "invalid_value", "tool_choice")
    if tools and choice != "none":
        call.tools, call.tool_choice = tools, choice
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _Refused(400, "'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}.",
                       "invalid_value", "response_format")  # fmt: skip
    if kind != "json_schema":
        return  # json_object: a plain answer (the scorer judges it like any other)
    spec = fmt.get("json_schema")
    schema = spec.get("schema", {}) if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(schema, dict):
        raise _Refused(400, "'response_format.json_schema' needs a string 'name' and an object 'schema'.",
                       "invalid_value", "response_format")  # fmt: skip
    if call.tools:
        raise _Refused(400, "'response_format' json_schema cannot be combined with 'tools' here.",
                       "invalid_value", "response_format")  # fmt: skip
    function = {"name": spec["name"], "parameters": spec.get("schema") or {"type": "object", "properties": {}}}
    function["description"] = spec.get("description") or f"Give the answer as {spec['name']}."
    call.tools = [{"type": "function", "function": function}]
    call.tool_choice = {"type": "function", "function": {"name": spec["name"]}}
    call.schema_name = spec["name"]


def _runnable(model: Any, call: _Call) -> Any:
    """``model`` with the request's tools bound (a json_schema answer is a forced function call)."""
    if call.tools:
        return model.bind_tools(call.tools, tool_choice=call.tool_choice)
    return model


# ---------------------------------------------------------------------------- the answer


def _failure(exc: BaseException) -> Response:
    status, body, headers = _failure_body(exc)
    return _error(status, body, headers)


def _failure_body(exc: BaseException) -> tuple[int, JSON, dict[str, str]]:
    """Status, body and headers for a request the cascade did not answer; internals stay in the log."""
    result = getattr(exc, "result", None)
    trail = _jsonable(result.trail()) if result is not None and hasattr(result, "trail") else None
    if isinstance(exc, BudgetExceeded):
        body = error_body(str(exc), "insufficient_quota", "budget_exceeded", exc.limit)
        return 429, {**body, "frugal": trail}, _NO_RETRY
    if isinstance(exc, CascadeError):
        body = error_body(str(exc), "api_error", "all_stages_failed")
        return 422, {**body, "frugal": trail}, _NO_RETRY
    if isinstance(exc, LedgerError):
        logger.error("refused a request: the budget ledger failed: %s", exc)
        message = "The budget ledger is unavailable, so no stage was called (budgets fail closed). Try again later."
        return 503, error_body(message, "api_error", "ledger_unavailable"), {}
    if isinstance(exc, ConfigurationError):
        return 400, error_body(str(exc), "invalid_request_error", "invalid_value"), {}
    logger.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    message = "The server failed to answer this request; the details are in its log."
    return 500, error_body(message, "api_error", "internal_error"), {}


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


async def _buffered_events(reply: Reply, common: dict[str, Any], trail: Any) -> AsyncIterator[str]:
    """A whole answer as ``chat.completion.chunk`` events; the finish chunk carries the usage and trail."""
    chunks = list(stream_chunks(reply, include_usage=False, **common))
    if reply.usage is not None:
        chunks[-1]["usage"] = usage_body(reply.usage)
    chunks[-1]["frugal"] = trail
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


@dataclass
class _Raised:
    error: BaseException


_END = object()


def _start(stream: AsyncIterator[Any]) -> asyncio.Queue[Any]:
    """Read ``stream`` in a task of its own, into a queue: when the client hangs up, the response is
    cancelled but the task reads on to the end, so the cascade settles and records what the stage cost."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        try:
            async for chunk in stream:
                queue.put_nowait(chunk)
        except Exception as exc:
            queue.put_nowait(_Raised(exc))
        else:
            queue.put_nowait(_END)

    task = asyncio.get_running_loop().create_task(read())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return queue


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
    while item is not _END:
        if isinstance(item, _Raised):  # mid-stream: the status line is out, so report it in the stream
            yield f"data: {json.dumps(_failure_body(item.error)[1])}\n\n"
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
    yield event({}, "stop", usage=totals, frugal=_jsonable(trail))
    yield "data: [DONE]\n\n"
