"""``frugal serve``, framework-free: keys and scopes, request validation, and error statuses.

The cascade behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Any OpenAI client, in any language, can then call a saved strategy. Each API key maps to a scope (tenant,
and optionally user; a request's ``user`` field names the user otherwise): budgets, the answer cache and
the ledger all see that scope. Streaming is Server-Sent Events, as OpenAI sends them. ``tools``,
``tool_choice`` and ``response_format`` (``json_schema``: answered through a forced function call on every
stage, validated against the schema; ``json_object``: a plain answer) reach the cascade. A request's
``max_tokens`` only lowers each stage's own output cap. Needs ``starlette`` and ``uvicorn``
(``frugal-cascade[serve]``), imported only when the server is built. The framework glue (turning a
request into model calls and the model's answer into a reply) is the adapter's:
``frugal_langchain.serve``.

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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared_scorer.context import Scope
from shared_scorer.errors import BudgetExceeded, CascadeError, ConfigurationError, LedgerError
from shared_scorer.server.wire import JSON, Reply, error_body, stream_chunks, usage_body

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

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
    return {key: scope_of(value, f"keys file {str(path)!r}, key {key[:4]}...") for key, value in data.items()}


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


@dataclass
class ServeCall:
    """One request, validated: what to send to the cascade and how to answer."""

    messages: list[Any]
    config: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
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


def parse_request(body: Any, scope: Scope, convert_messages: Callable[[list[Any]], list[Any]]) -> ServeCall:
    """Validate a chat-completions body; every problem is a 400 naming the field. ``convert_messages`` turns
    the body's ``messages`` into the backend's messages (an error it raises is a 400 naming ``messages``)."""
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise Refused(400, "'messages' must be a non-empty list of messages.", param="messages")
    try:
        messages = convert_messages(raw)
    except Exception as exc:
        raise Refused(400, f"'messages' could not be read: {exc}", param="messages") from None
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise Refused(400, f"'user' must be a string, got {_shown(user)}.", param="user")
    scope_user = user if scope.user == "default" and user else scope.user
    call = ServeCall(messages, {"metadata": {"tenant": scope.tenant, "user": scope_user}})
    limits = [v for v in (_positive_int(body, "max_completion_tokens"), _positive_int(body, "max_tokens")) if v]
    if limits:  # the cascade sends each stage the smaller of this and the stage's own output limit
        call.options["max_tokens"] = min(limits)
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise Refused(400, f"'temperature' must be a number from 0 to 2, got {_shown(temperature)}.",
                           "invalid_value", "temperature")  # fmt: skip
        call.options["temperature"] = float(temperature)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise Refused(400, "'stop' must be a string or a list of strings.", "invalid_value", "stop")
        if stop:
            call.options["stop"] = stop
    if body.get("n") not in (None, 1):
        raise Refused(400, f"'n' must be 1 (one answer per request), got {_shown(body['n'])}.", "invalid_value", "n")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Refused(400, f"'stream' must be true or false, got {_shown(stream)}.", "invalid_value", "stream")
    call.stream = bool(stream)
    parse_tools(body, call)
    return call


def parse_tools(body: Mapping[str, Any], call: ServeCall) -> None:
    """``tools``, ``tool_choice`` and ``response_format`` into ``call``."""
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
    if tools and choice != "none":
        call.tools, call.tool_choice = tools, choice
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise Refused(400, "'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}.",
                       "invalid_value", "response_format")  # fmt: skip
    if kind != "json_schema":
        return  # json_object: a plain answer (the scorer judges it like any other)
    spec = fmt.get("json_schema")
    schema = spec.get("schema", {}) if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(schema, dict):
        raise Refused(400, "'response_format.json_schema' needs a string 'name' and an object 'schema'.",
                       "invalid_value", "response_format")  # fmt: skip
    if call.tools:
        raise Refused(400, "'response_format' json_schema cannot be combined with 'tools' here.",
                       "invalid_value", "response_format")  # fmt: skip
    function = {"name": spec["name"], "parameters": spec.get("schema") or {"type": "object", "properties": {}}}
    function["description"] = spec.get("description") or f"Give the answer as {spec['name']}."
    call.tools = [{"type": "function", "function": function}]
    call.tool_choice = {"type": "function", "function": {"name": spec["name"]}}
    call.schema_name = spec["name"]


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


async def buffered_events(reply: Reply, common: dict[str, Any], trail: Any) -> AsyncIterator[str]:
    """A whole answer as ``chat.completion.chunk`` events; the finish chunk carries the usage and trail."""
    chunks = list(stream_chunks(reply, include_usage=False, **common))
    if reply.usage is not None:
        chunks[-1]["usage"] = usage_body(reply.usage)
    chunks[-1]["frugal"] = trail
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
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
