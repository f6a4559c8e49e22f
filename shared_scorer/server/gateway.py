"""``frugal serve``, framework-free: keys and scopes, request validation, and error statuses.

The cascade behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Any OpenAI client, in any language, can then call a saved strategy. Each API key maps to a scope (tenant,
and optionally user; a request's ``user`` field names the user otherwise): budgets, the answer cache and
the ledger all see that scope. Streaming is Server-Sent Events, as OpenAI sends them. ``tools``,
``tool_choice`` and ``response_format`` (``json_schema``: answered through a forced function call on every
stage, validated against the schema; ``json_object``: a plain answer) reach the cascade. A request's
``max_tokens`` only lowers each stage's own output cap. Needs ``starlette`` and ``uvicorn``
(``frugal-cascade[serve]``), imported only when the server is built. The framework glue (turning a
:class:`ChatRequest` into model calls and the model's answer into a :class:`ChatReply`) is a
:class:`ServeBackend`'s: ``frugal_langchain.serve.LangChainBackend`` or
``frugal_llamaindex.serve.LlamaIndexBackend``; every reply goes out through the one wire encoder,
:mod:`shared_scorer.server.wire`.

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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from shared_scorer.context import Scope
from shared_scorer.errors import BudgetExceeded, CascadeError, ConfigurationError, LedgerError
from shared_scorer.outcome import ToolCall
from shared_scorer.server.wire import (
    JSON,
    Reply,
    chunk_body,
    completion_body,
    error_body,
    stream_chunks,
    usage_body,
)
from shared_scorer.server.wire import ToolCall as WireToolCall
from shared_scorer.strategy import split_cap

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from shared_scorer.budget import Budget
    from shared_scorer.cache import AnswerCache

logger = logging.getLogger("frugal.serve")


DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (413 above it)."""
DEFAULT_STAGE_TIMEOUT_S = 60.0
"""Seconds one stage call may take before it counts as failed (and the query escalates)."""
DEFAULT_STAGE_RETRIES = 1
"""Retries of one stage call by its client (on a connection error, 408, 409, 429 or 5xx) before it fails."""

NO_RETRY = {"x-should-retry": "false"}  # the OpenAI SDKs obey this header before looking at the status
background: set[asyncio.Task[Any]] = set()  # streams still read after their client hung up


@dataclass(frozen=True)
class StageOptions:
    """How ``frugal serve`` builds each provider stage of a strategy, whatever the framework.

    Each stage calls ``base_url`` with ``api_key``, gives up after ``timeout_s`` seconds and ``max_retries``
    retries (so a hanging provider escalates instead of holding the request); ``max_tokens`` caps the models
    the strategy leaves uncapped, while a ``model@N`` entry keeps its learned cap ``N``.

    >>> opts = StageOptions(base_url="http://127.0.0.1:9/v1", api_key="-", max_tokens=1024)
    >>> opts.caps(["small@300", "big"])
    {'small': None, 'big': 1024}
    """

    base_url: str
    api_key: str
    timeout_s: float = DEFAULT_STAGE_TIMEOUT_S
    max_retries: int = DEFAULT_STAGE_RETRIES
    max_tokens: int | None = None

    def caps(self, chain: Sequence[str]) -> dict[str, int | None]:
        """Each provider model of a strategy's ``chain`` and the ``max_tokens`` its stage client gets
        (``None`` where the chain only caps it as ``model@N``: ``from_strategy`` sets that cap on a copy). A
        model that tiers call both capped and uncapped gets ``max_tokens``; a capped copy keeps the smaller."""
        entries = [split_cap(entry) for entry in chain]
        uncapped = {model for model, cap in entries if cap is None}
        return {model: self.max_tokens if model in uncapped else None for model, _ in entries}

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[StageOptions, dict[str, Any]]:
        """The stage options among ``serve_backend``'s keywords, and the rest (for ``from_strategy``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names}), {
            k: v for k, v in options.items() if k not in names
        }


def load_keys(path: str | Path) -> dict[str, Scope]:
    """Read a keys file: ``{"KEY": {"tenant": "acme", "user": "svc"}, ...}`` (``user`` optional), or the same
    object under ``"keys"``."""
    return {key: scope_of(value, f"key {key[:4]}...") for key, value in read_keys(path).items()}


def read_keys(path: str | Path) -> dict[str, Any]:
    """A keys file's entries as written, each checked: ``{"tenant": "acme", "user": "svc", "tier": "paid"}``
    (``user`` and ``tier`` optional; ``tier`` names the caller tier of the key's calls). ``make_app`` takes them."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"keys file {str(path)!r}: cannot read it as JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("keys"), dict):
        data = data["keys"]
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f"keys file {str(path)!r}: expected an object mapping keys to {{'tenant': ...}}")
    for key, value in data.items():
        scope_of(value, f"keys file {str(path)!r}, key {key[:4]}...")
        key_tier(value, f"keys file {str(path)!r}, key {key[:4]}...")
    return data


def key_tier(value: object, where: str) -> str | None:
    """The caller tier a key's entry names (``"tier"``), or ``None``."""
    tier = value.get("tier") if isinstance(value, Mapping) else None
    if tier is not None and (not isinstance(tier, str) or not tier):
        raise ConfigurationError(f"{where}: 'tier' must be a tier name, got {tier!r}")
    return tier


def scope_of(value: object, where: str) -> Scope:
    if isinstance(value, Scope):
        return value
    if isinstance(value, str):
        return Scope(tenant=value)
    if isinstance(value, Mapping) and isinstance(value.get("tenant"), str):
        user = value.get("user")
        return Scope(tenant=value["tenant"], user=user if isinstance(user, str) else "default")
    raise ConfigurationError(f"{where}: expected {{'tenant': str, 'user': str (optional)}}, got {value!r}")


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def open_answer_cache(spec: str, *, semantic: bool = True) -> AnswerCache:
    """The answer cache ``--answer-cache`` names: a SQLite file path, or a Chroma server's
    ``http://HOST:PORT[/PREFIX]`` (``chroma://`` works too). Entries are scoped by tenant and user."""
    from shared_scorer.cache import AnswerCache, ChromaStore

    if spec.startswith(("http://", "https://", "chroma://")):
        if not semantic:  # ChromaStore keeps vectors: every store would fail (and be logged), nothing cached
            raise ConfigurationError(
                f"answer cache {spec!r}: a Chroma server stores embeddings, so it cannot be exact-only "
                "(--answer-cache-exact); drop that option, or give a SQLite file"
            )
        parts = urlsplit(spec)
        prefix = parts.path.strip("/") or "frugal-cache"
        store: Any = ChromaStore(parts.hostname or "127.0.0.1", parts.port or 8000, prefix=prefix)
        return AnswerCache(store, semantic=semantic)
    if "://" in spec:
        raise ConfigurationError(f"answer cache {spec!r}: expected a SQLite file path or http://HOST:PORT (Chroma)")
    return AnswerCache(spec, semantic=semantic)


class Refused(Exception):
    """A request refused before any stage is called."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param

    def response(self) -> Response:
        return error_response(self.status, error_body(str(self), "invalid_request_error", self.code, self.param))


@dataclass(frozen=True)
class ChatRequest:
    """One validated chat-completions request, framework-free: what a :class:`ServeBackend` answers.

    ``messages`` are OpenAI message dicts (each with a known ``role``); ``tools`` OpenAI function tools.
    A ``response_format: json_schema`` arrives already as a forced function call in ``tools`` and
    ``tool_choice`` (the gateway turns its arguments back into the answer); ``response_format`` is kept as
    sent, for information only. ``max_tokens`` is the smaller of the body's ``max_tokens`` and
    ``max_completion_tokens``: it only lowers each stage's own output cap.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    user: str | None = None
    tier: str | None = None
    """The caller tier the API key names (its ``"tier"`` in the keys file); ``None``: the tenant's, else the
    model's own point (see ``shared_scorer.adapters.tiers``)."""


@dataclass(frozen=True)
class ChatReply:
    """A backend's whole answer: text, tool calls, ``(input, output)`` tokens over all stages, the model
    that answered and the cascade's trail (``CascadeResult.trail()``)."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: tuple[int, int] = (0, 0)
    model: str | None = None
    trail: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StreamEvent:
    """One piece of a streamed answer: ``text`` as it arrives (from ``model`` where known); the last event
    carries the whole ``reply`` (its usage, model and trail; its text is not sent again)."""

    text: str = ""
    model: str | None = None
    reply: ChatReply | None = None


@runtime_checkable
class ServeBackend(Protocol):
    """What ``frugal serve`` needs of a framework: a cascade model answering :class:`ChatRequest` s.

    ``name`` is the model name ``/v1/models`` lists. ``complete`` answers at once; ``stream`` yields
    :class:`StreamEvent` s, the last one with the ``reply``. Both run the call in ``scope`` (budgets, answer
    cache and ledger see it), raise the cascade's errors (``BudgetExceeded``, ``CascadeError``,
    ``LedgerError``; a ``ConfigurationError`` for a request the framework cannot take, a 400) and raise
    them from ``stream`` before its first event where the cascade does. Implementations:
    ``frugal_langchain.serve.LangChainBackend`` and ``frugal_llamaindex.serve.LlamaIndexBackend``.
    """

    name: str

    async def complete(self, request: ChatRequest, scope: Scope) -> ChatReply: ...

    def stream(self, request: ChatRequest, scope: Scope) -> AsyncIterator[StreamEvent]: ...


@dataclass
class ServeCall:
    """One request, validated: what to ask the backend, in which scope, and how to answer."""

    request: ChatRequest
    scope: Scope
    schema_name: str | None = None
    """Set for ``response_format: json_schema``: the forced function whose arguments are the answer."""
    stream: bool = False


def error_response(status: int, body: JSON, headers: Mapping[str, str] | None = None) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else repr(v)))


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refused with 413 past ``limit`` bytes (declared or actually sent)."""
    too_large = f"The request body is larger than this server accepts ({limit} bytes)."
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refused(400, "The Content-Length header is not a number.")
        if int(declared) > limit:
            raise Refused(413, too_large, "request_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise Refused(413, too_large, "request_too_large")
    try:
        return json.loads(data)
    except ValueError:
        raise Refused(400, "The request body is not valid JSON.") from None


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Refused(400, f"'{key}' must be a positive integer, got {_shown(value)}.", "invalid_value", key)
    return value


ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_request(body: Any, scope: Scope, tier: str | None = None) -> ServeCall:
    """Validate a chat-completions body; every problem is a 400 naming the field. The call's scope is the
    key's; a key without a user of its own takes the body's ``user``; ``tier`` is the key's caller tier."""
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "'messages' must be a non-empty list of messages.", param="messages")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            shown = _shown(role) if isinstance(message, dict) else type(message).__name__
            raise Refused(400, f"'messages' could not be read: message {i} has no known role ({shown}).",
                           param="messages")  # fmt: skip
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise Refused(400, f"'user' must be a string, got {_shown(user)}.", param="user")
    scope_user = user if scope.user == "default" and user else scope.user
    limits = [v for v in (_positive_int(body, "max_completion_tokens"), _positive_int(body, "max_tokens")) if v]
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise Refused(400, f"'temperature' must be a number from 0 to 2, got {_shown(temperature)}.",
                           "invalid_value", "temperature")  # fmt: skip
        temperature = float(temperature)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise Refused(400, "'stop' must be a string or a list of strings.", "invalid_value", "stop")
    if body.get("n") not in (None, 1):
        raise Refused(400, f"'n' must be 1 (one answer per request), got {_shown(body['n'])}.", "invalid_value", "n")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Refused(400, f"'stream' must be true or false, got {_shown(stream)}.", "invalid_value", "stream")
    tools, tool_choice, schema_name = parse_tools(body)
    request = ChatRequest(
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        response_format=body.get("response_format"),
        max_tokens=min(limits) if limits else None,  # each stage gets the smaller of this and its own cap
        temperature=temperature,
        stop=stop or None,
        user=user,
        tier=tier,
    )
    return ServeCall(request, Scope(scope.tenant, scope_user), schema_name, bool(stream))


def parse_tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]] | None, Any, str | None]:
    """``tools``, ``tool_choice`` and ``response_format`` as (tools, tool_choice, schema name): a
    ``json_schema`` answer becomes a forced call of a function named after the schema."""
    tools = body.get("tools")
    if tools is not None:
        valid = isinstance(tools, list) and all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools
        )  # fmt: skip
        if not valid:
            raise Refused(400, "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                           "invalid_value", "tools")  # fmt: skip
    choice = body.get("tool_choice")
    named = isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str)
    if choice is not None and choice not in ("none", "auto", "required") and not named:
        message = '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", ...}.'
        raise Refused(400, message, "invalid_value", "tool_choice")
    if not tools or choice == "none":
        tools, choice = None, None
    fmt = body.get("response_format")
    if fmt is None:
        return tools, choice, None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise Refused(400, "'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}.",
                       "invalid_value", "response_format")  # fmt: skip
    if kind != "json_schema":
        return tools, choice, None  # json_object: a plain answer (the scorer judges it like any other)
    spec = fmt.get("json_schema")
    schema = spec.get("schema", {}) if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(schema, dict):
        raise Refused(400, "'response_format.json_schema' needs a string 'name' and an object 'schema'.",
                       "invalid_value", "response_format")  # fmt: skip
    if tools:
        raise Refused(400, "'response_format' json_schema cannot be combined with 'tools' here.",
                       "invalid_value", "response_format")  # fmt: skip
    function = {"name": spec["name"], "parameters": spec.get("schema") or {"type": "object", "properties": {}}}
    function["description"] = spec.get("description") or f"Give the answer as {spec['name']}."
    forced = {"type": "function", "function": {"name": spec["name"]}}
    return [{"type": "function", "function": function}], forced, spec["name"]


def failure_response(exc: BaseException) -> Response:
    status, body, headers = failure_body(exc)
    return error_response(status, body, headers)


def failure_body(exc: BaseException) -> tuple[int, JSON, dict[str, str]]:
    """Status, body and headers for a request the cascade did not answer; internals stay in the log."""
    result = getattr(exc, "result", None)
    trail = jsonable(result.trail()) if result is not None and hasattr(result, "trail") else None
    if isinstance(exc, BudgetExceeded):
        body = error_body(str(exc), "insufficient_quota", "budget_exceeded", exc.limit)
        return 429, {**body, "frugal": trail}, NO_RETRY
    if isinstance(exc, CascadeError):
        body = error_body(str(exc), "api_error", "all_stages_failed")
        return 422, {**body, "frugal": trail}, NO_RETRY
    if isinstance(exc, LedgerError):
        logger.error("refused a request: the budget ledger failed: %s", exc)
        message = "The budget ledger is unavailable, so no stage was called (budgets fail closed). Try again later."
        return 503, error_body(message, "api_error", "ledger_unavailable"), {}
    if isinstance(exc, ConfigurationError):
        return 400, error_body(str(exc), "invalid_request_error", "invalid_value"), {}
    logger.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    message = "The server failed to answer this request; the details are in its log."
    return 500, error_body(message, "api_error", "internal_error"), {}


def make_app(
    backend: ServeBackend,
    keys: Mapping[str, Scope | Mapping[str, str] | str],
    budget: Budget | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    routes: Sequence[Any] = (),
) -> Starlette:
    """An ASGI app serving ``backend`` to the holders of ``keys`` (each key to its scope).

    ``budget`` is the one the backend's model was built with, kept as ``app.state.budget``;
    ``max_body_bytes`` bounds a request body (413 above it); ``routes`` are more Starlette routes served
    beside ``/v1``, which check their own keys (``Dashboard(...).routes()``: ``/dashboard``). Example::

        backend = LangChainBackend(FrugalChatModel.from_strategy(strategy, stages, budget=budget))
        app = make_app(backend, {"sk-acme": {"tenant": "acme"}}, budget)
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    if max_body_bytes < 1:
        raise ConfigurationError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    scopes = {key_digest(key): scope_of(value, f"key {key[:4]}...") for key, value in keys.items()}
    tiers = {key_digest(key): key_tier(value, f"key {key[:4]}...") for key, value in keys.items()}
    if not scopes:
        raise ConfigurationError("frugal serve needs at least one API key")
    name = str(getattr(backend, "name", None) or "frugal-cascade")
    unauthorised = error_body("Missing or invalid API key.", "invalid_request_error", "invalid_api_key")

    def key_of(request: Request) -> str:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return key_digest(token) if token else ""

    def authorise(request: Request) -> Scope | None:
        return scopes.get(key_of(request))

    async def completions(request: Request) -> Response:
        scope = authorise(request)
        if scope is None:
            return error_response(401, unauthorised)
        try:
            call = parse_request(await read_json(request, max_body_bytes), scope, tiers.get(key_of(request)))
        except Refused as refused:
            return refused.response()
        reply_id, created = f"chatcmpl-frugal-{uuid.uuid4().hex[:24]}", int(time.time())
        if call.stream and not call.request.tools:  # the last stage streams live
            queue = start_reading(backend.stream(call.request, call.scope))
            first = await queue.get()
            if isinstance(first, Raised):
                return failure_response(first.error)
            events = live_events(first, queue, reply_id, created, name)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            answer = await backend.complete(call.request, call.scope)
        except Exception as exc:
            return failure_response(exc)
        reply, call_ids = wire_reply(answer, call.schema_name)
        trail = jsonable(answer.trail)
        common: dict[str, Any] = {
            "completion_id": reply_id,
            "model": answer.model or name,
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

    served = [Route("/v1/chat/completions", completions, methods=["POST"]), Route("/v1/models", models), *routes]
    app = Starlette(routes=served)
    app.state.backend = backend
    app.state.budget = budget
    return app


def wire_reply(answer: ChatReply, schema_name: str | None) -> tuple[Reply, list[str]]:
    """A backend's answer as a wire :class:`Reply` and its tool calls' ids (a json_schema answer: the forced
    call's arguments as the text)."""
    if schema_name is not None:
        args = next((c.arguments for c in answer.tool_calls if c.name == schema_name), None)
        return Reply(json.dumps(dict(args)) if args is not None else answer.text, usage=answer.usage), []
    calls = tuple(WireToolCall(c.name, json.dumps(dict(c.arguments))) for c in answer.tool_calls)
    call_ids = [c.id or f"call_{i}" for i, c in enumerate(answer.tool_calls)]
    return Reply(answer.text if answer.text or not calls else None, calls, usage=answer.usage), call_ids


async def buffered_events(reply: Reply, common: dict[str, Any], trail: Any) -> AsyncIterator[str]:
    """A whole answer as ``chat.completion.chunk`` events; the finish chunk carries the usage and trail."""
    chunks = list(stream_chunks(reply, include_usage=False, **common))
    if reply.usage is not None:
        chunks[-1]["usage"] = usage_body(reply.usage)
    chunks[-1]["frugal"] = trail
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


async def live_events(
    first: Any, queue: asyncio.Queue[Any], reply_id: str, created: int, name: str
) -> AsyncIterator[str]:
    """A live stream's :class:`StreamEvent` s as ``chat.completion.chunk`` events; the last one carries the
    finish reason, usage and trail. An error after the first event is reported in the stream."""
    model_name, final = name, None

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = chunk_body(delta, completion_id=reply_id, model=model_name, created=created, finish_reason=finish)
        return f"data: {json.dumps({**body, **extra})}\n\n"

    yield event({"role": "assistant", "content": ""})
    item = first
    while item is not END:
        if isinstance(item, Raised):  # mid-stream: the status line is out, so report it in the stream
            yield f"data: {json.dumps(failure_body(item.error)[1])}\n\n"
            return
        model_name = item.model or model_name
        if item.text:
            yield event({"content": item.text})
        if item.reply is not None:
            final = item.reply
            model_name = final.model or model_name
        item = await queue.get()
    usage, trail = (final.usage, jsonable(final.trail)) if final is not None else ((0, 0), None)
    yield event({}, "stop", usage=usage_body(usage), frugal=trail)
    yield "data: [DONE]\n\n"


@dataclass
class Raised:
    error: BaseException


END = object()


def start_reading(stream: AsyncIterator[Any]) -> asyncio.Queue[Any]:
    """Read ``stream`` in a task of its own, into a queue: when the client hangs up, the response is
    cancelled but the task reads on to the end, so the cascade settles and records what the stage cost."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        try:
            async for chunk in stream:
                queue.put_nowait(chunk)
        except Exception as exc:
            queue.put_nowait(Raised(exc))
        else:
            queue.put_nowait(END)

    task = asyncio.get_running_loop().create_task(read())
    background.add(task)
    task.add_done_callback(background.discard)
    return queue
