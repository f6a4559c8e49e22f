"""A local OpenAI-compatible server that replays recorded answers, for tests and offline benchmarks.

Run it with ``frugal replay-server`` or ``python -m shared_scorer.server``.

``POST /v1/chat/completions`` answers with the recorded answer of the request's model to the text of its
last user message (with the recorded token counts as ``usage``, and, when the request asks for
``logprobs`` and the row has a ``logprob``, an OpenAI ``logprobs`` payload summing to it), streamed or
not; scripted ``scenarios``
return tool calls; faults can be injected per model from Python (:meth:`ReplayServer.set_fault`) or over
HTTP (``POST /admin/faults`` ``{"model", "kind", "count"}``, ``DELETE /admin/faults``):

* ``"429"``: HTTP 429 with a rate-limit error and ``retry-after: 0``;
* ``"500"``: HTTP 500 with a server error;
* ``"hang"``: waits ``hang_seconds`` before answering (other requests are served meanwhile);
* ``"malformed"``: HTTP 200, ``application/json``, but a body that is not valid JSON;
* ``"garbage"``: HTTP 200, valid JSON without ``choices``.
"""

from __future__ import annotations

import difflib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.data import Record, load_records, models_of
from shared_scorer.server._http import HTTPServer, Response
from shared_scorer.server.scenarios import FAULT_KINDS, MALFORMED_BODY, Scenario
from shared_scorer.server.wire import JSON, Reply, completion_body, error_body, last_role, last_user_text, stream_chunks

SCENARIOS_DOCS = "docs/replay-server.md"
"""The guide to the scenario format, named by the error of a prompt that was not recorded."""

_COMPARED_CHARS = 2000
"""How much of a prompt the closest-prompt search compares (a RAG prompt can be long)."""


class ReplayRequest(NamedTuple):
    """One chat request the server received: its model, last user text and the fault injected, if any."""

    model: str
    query: str
    fault: str | None


class ReplayBill(NamedTuple):
    """What one answered chat request was billed: the tokens of the usage the server sent back."""

    number: int
    """The request's position in :attr:`ReplayServer.requests` (1-based)."""
    model: str
    query: str
    input_tokens: int
    output_tokens: int
    max_tokens: int | None
    """The request's output-token limit (``max_completion_tokens``, else ``max_tokens``), if any."""


class ReplayServer:
    """A local OpenAI-compatible chat-completions server that answers from recorded data.

    A request's ``model`` selects the recorded model and the text of its last user message selects the
    record (exact match, then with surrounding whitespace stripped). ``scenarios`` (see
    :class:`~shared_scorer.server.scenarios.Scenario`) are checked first, and injected faults
    (:meth:`set_fault`, or ``POST /admin/faults``) before everything. It serves in a background thread::

        with ReplayServer(records) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x")
    """

    def __init__(
        self,
        records: Iterable[Record] | None = None,
        *,
        scenarios: Iterable[Mapping[str, Any] | Scenario] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        hang_seconds: float = 30.0,
    ) -> None:
        self.records: list[Record] = list(records or [])
        self.scenarios: list[Scenario] = [
            s if isinstance(s, Scenario) else Scenario.from_dict(s, f"scenarios[{i}]")
            for i, s in enumerate(scenarios or [])
        ]
        self.host = host
        self.hang_seconds = hang_seconds
        self._requested_port = port
        self._exact: dict[tuple[str, str], Record] = {}
        self._stripped: dict[tuple[str, str], Record] = {}
        self._queries: dict[str, list[str]] = {}
        for record in self.records:
            if (record.model, record.query) not in self._exact:
                self._queries.setdefault(record.model, []).append(record.query)
            self._exact.setdefault((record.model, record.query), record)
            self._stripped.setdefault((record.model, record.query.strip()), record)
        scenario_models = [s.model for s in self.scenarios if s.model != "*"]
        self.models: list[str] = list(dict.fromkeys([*models_of(self.records), *scenario_models]))
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[str, int | None]] = {}
        self._log: list[ReplayRequest] = []
        self._bills: list[ReplayBill] = []
        self._tool_calls = 0
        self._stopping = threading.Event()
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_files(cls, *paths: str | Path, scenarios_path: str | Path | None = None, **options: Any) -> ReplayServer:
        """A server over the records of recorded JSON Lines files and, optionally, a JSON scenarios file.

        The scenarios file holds a list of scenario objects (or ``{"scenarios": [...]}``).
        """
        records = [record for path in paths for record in load_records(path)]
        scenarios: list[Scenario] = []
        if scenarios_path is not None:
            raw = json.loads(Path(scenarios_path).read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                raw = raw.get("scenarios")
            if not isinstance(raw, list):
                raise ConfigurationError(f"{scenarios_path}: expected a list of scenarios")
            scenarios = [Scenario.from_dict(s, f"{scenarios_path}: scenarios[{i}]") for i, s in enumerate(raw)]
        return cls(records, scenarios=scenarios, **options)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> ReplayServer:
        """Bind the socket and serve in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = HTTPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="replay-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: hanging requests return at once and open connections are closed."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # hanging requests answer 503 at once
        httpd.shutdown()
        httpd.wait_idle(timeout=2.0)
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``); the server must be started."""
        if self._httpd is None:
            raise RuntimeError("the replay server is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client as ``base_url``."""
        return f"{self.url}/v1"

    # ---------------------------------------------------------------- faults, log

    def set_fault(self, model: str, kind: str, count: int | None = None) -> None:
        """Make the next ``count`` requests of ``model`` (all of them when None; ``"*"``: any model) fail.

        ``kind`` is one of ``"429"``, ``"500"``, ``"hang"``, ``"malformed"`` and ``"garbage"``.
        """
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ConfigurationError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ConfigurationError(f"fault count must be a positive integer or None, got {count!r}")
        with self._lock:
            self._faults[model] = (kind, count)

    def clear_faults(self, model: str | None = None) -> None:
        """Remove the fault of ``model``, or every fault when ``model`` is None."""
        with self._lock:
            if model is None:
                self._faults.clear()
            else:
                self._faults.pop(model, None)

    @property
    def faults(self) -> dict[str, tuple[str, int | None]]:
        """The faults in force: model -> (kind, requests left or None)."""
        with self._lock:
            return dict(self._faults)

    @property
    def requests(self) -> list[ReplayRequest]:
        """A snapshot of every chat request received so far, in order."""
        with self._lock:
            return list(self._log)

    def request_count(self, model: str | None = None) -> int:
        """How many chat requests named ``model`` (all requests when None)."""
        with self._lock:
            return sum(1 for entry in self._log if model is None or entry.model == model)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()
            self._bills.clear()

    @property
    def bills(self) -> list[ReplayBill]:
        """A snapshot of what every answered request was billed (requests whose reply carried a usage),
        recorded when the reply is built: a client that hangs up while it is written is billed all the same."""
        with self._lock:
            return list(self._bills)

    def _take_fault(self, model: str, query: str) -> tuple[int, str | None]:
        """Log the request and consume the fault that applies to it; returns (request number, fault)."""
        with self._lock:
            key = model if model in self._faults else "*" if "*" in self._faults else None
            kind: str | None = None
            if key is not None:
                kind, left = self._faults[key]
                if left is not None:
                    if left <= 1:
                        del self._faults[key]
                    else:
                        self._faults[key] = (kind, left - 1)
            self._log.append(ReplayRequest(model, query, kind))
            return len(self._log), kind

    # ------------------------------------------------------------------ replies

    def lookup(self, model: str, query: str) -> Record | None:
        """The record of ``model`` whose query is ``query`` (or equal to it once stripped)."""
        return self._exact.get((model, query)) or self._stripped.get((model, query.strip()))

    def closest_queries(self, model: str, query: str, n: int = 3) -> list[str]:
        """The ``n`` recorded queries of ``model`` most like ``query`` (difflib's ratio), most alike first."""
        matcher = difflib.SequenceMatcher(b=query[:_COMPARED_CHARS])
        scored = []
        for index, candidate in enumerate(self._queries.get(model, ())):
            matcher.set_seq1(candidate[:_COMPARED_CHARS])
            scored.append((-matcher.ratio(), index, candidate))
        return [candidate for _, _, candidate in sorted(scored)[:n]]

    def _query_not_found(self, model: str, query: str) -> Response:
        """404 ``query_not_found`` naming the model, the prompt received, the closest recorded ones and
        how to add a scenario (the extra fields sit beside OpenAI's four in the error object)."""
        received = query[:200]
        closest = self.closest_queries(model, query)
        if closest:
            near = f"Closest recorded prompts of `{model}`: {'; '.join(_quoted(q[:200]) for q in closest)}."
        else:
            near = f"No prompt of `{model}` is recorded."
        example = json.dumps({"model": model, "match": "<text of the prompt>", "content": "<answer>"})
        message = (
            f"No recorded answer of model `{model}` for the prompt {_quoted(received)} "
            f"(the last user message, first 200 characters). {near} "
            f"To answer it, record it or add a scenario {example} (see {SCENARIOS_DOCS})."
        )
        body = error_body(message, "invalid_request_error", "query_not_found")
        body["error"].update({"model": model, "query": received, "closest": closest, "docs": SCENARIOS_DOCS})
        return Response.json(404, body)

    def _chat(self, body: object) -> Response:
        if not isinstance(body, dict):
            message = "The request body must be a JSON object."
            return Response.error(400, message, "invalid_request_error", None)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list):
            message = "The request needs a string 'model' and a list of 'messages'."
            return Response.error(400, message, "invalid_request_error", None)
        query = last_user_text(messages)
        number, fault = self._take_fault(model, query)
        if fault == "429":
            message = f"Rate limit reached for {model} (injected by the replay server)."
            headers = {"retry-after": "0", "x-ratelimit-remaining-requests": "0"}
            return Response.json(429, error_body(message, "requests", "rate_limit_exceeded"), headers)
        if fault == "500":
            message = f"The server had an error processing a request for {model} (injected)."
            return Response.error(500, message, "server_error", None)
        if fault == "hang" and self._stopping.wait(self.hang_seconds):
            return Response.error(503, "The replay server is stopping.", "server_error", None)
        stream = body.get("stream") is True
        if fault in ("malformed", "garbage"):
            return self._broken(fault, model, number, stream)
        last = last_role(messages)
        reply = next((s.reply for s in self.scenarios if s.applies(model, query, last)), None)
        if reply is None:
            if model not in self.models:
                message = (
                    f"The model `{model}` does not exist on this replay server. "
                    f"Known models: {', '.join(self.models) or '(none)'}."
                )
                return Response.error(404, message, "invalid_request_error", "model_not_found")
            record = self.lookup(model, query)
            if record is None:
                return self._query_not_found(model, query)
            reply = recorded_reply(record, output_limit(body), **logprobs_asked(body))
        with self._lock:
            first = self._tool_calls + 1
            self._tool_calls += len(reply.tool_calls)
            if reply.usage is not None:
                self._bills.append(ReplayBill(number, model, query, *reply.usage, output_limit(body)))
        common: dict[str, Any] = {
            "completion_id": f"chatcmpl-replay-{number}",
            "model": model,
            "created": int(time.time()),
            "call_ids": [f"call_{first + i}" for i in range(len(reply.tool_calls))],
        }
        if not stream:
            return Response.json(200, completion_body(reply, **common))
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        chunks = stream_chunks(reply, include_usage=include_usage, **common)
        return Response(200, events=[json.dumps(chunk, ensure_ascii=False) for chunk in chunks])

    @staticmethod
    def _broken(fault: str, model: str, number: int, stream: bool) -> Response:
        if fault == "malformed":
            return Response(200, events=[MALFORMED_BODY]) if stream else Response(200, MALFORMED_BODY.encode())
        garbage: JSON = {"id": f"chatcmpl-replay-{number}", "object": "chat.completion", "model": model}
        if stream:
            return Response(200, events=[json.dumps({**garbage, "object": "chat.completion.chunk"})])
        return Response.json(200, {**garbage, "note": "no choices (injected garbage)"})

    def _admin_faults(self, method: str, body: object, params: dict[str, list[str]]) -> Response:
        if method == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                return Response.error(400, "Expected {model, kind, count}.", "invalid_request_error", None)
            try:
                self.set_fault(body["model"], str(body.get("kind")), body.get("count"))
            except ConfigurationError as exc:
                return Response.error(400, str(exc), "invalid_request_error", None)
        elif method == "DELETE":
            self.clear_faults(params["model"][0] if "model" in params else None)
        faults = {model: {"kind": kind, "count": count} for model, (kind, count) in self.faults.items()}
        return Response.json(200, {"faults": faults})

    def route(self, method: str, target: str, body: object) -> Response:
        """Answer one HTTP request (``body`` is the decoded JSON body, or None)."""
        parts = urlsplit(target)
        path, params = parts.path.rstrip("/"), parse_qs(parts.query)
        if path.startswith("/v1/"):
            path = path[3:]
        if path == "/chat/completions" and method == "POST":
            return self._chat(body)
        if path == "/models" and method == "GET":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "replay"} for m in self.models]
            return Response.json(200, {"object": "list", "data": data})
        if path == "/health" and method == "GET":
            return Response.json(200, {"status": "ok", "models": len(self.models), "records": len(self.records)})
        if path == "/admin/faults" and method in ("GET", "POST", "DELETE"):
            return self._admin_faults(method, body, params)
        if path == "/admin/requests" and method in ("GET", "DELETE"):
            if method == "DELETE":
                self.clear_requests()
            return Response.json(200, {"requests": [entry._asdict() for entry in self.requests]})
        return Response.error(404, f"No route for {method} {parts.path}.", "invalid_request_error", None)


def _quoted(text: str) -> str:
    """``text`` in JSON's double quotes, as the scenario it suggests is written."""
    return json.dumps(text, ensure_ascii=False)


def output_limit(body: dict[str, Any]) -> int | None:
    """The request's output-token limit (``max_completion_tokens``, else ``max_tokens``), if any."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def logprobs_asked(body: dict[str, Any]) -> dict[str, Any]:
    """``{"logprobs": bool, "top_logprobs": int}``: whether the request asks for token log-probabilities
    (``logprobs: true``) and how many alternatives per token (``top_logprobs``, 0 to 20)."""
    top = body.get("top_logprobs")
    top = top if isinstance(top, int) and not isinstance(top, bool) else 0
    return {"logprobs": body.get("logprobs") is True, "top_logprobs": min(max(top, 0), 20)}


def recorded_reply(record: Record, limit: int | None, *, logprobs: bool = False, top_logprobs: int = 0) -> Reply:
    """The recorded answer, or, when it used more output tokens than ``limit``, what a provider sends
    when a reasoning model hits the limit: no content, ``finish_reason: "length"``, ``limit`` tokens billed.

    When ``logprobs`` is asked for and the record has a ``logprob``, the reply carries it (see
    :func:`~shared_scorer.server.wire.logprob_tokens`); a cut reply carries none."""
    usage = None
    if record.input_tokens is not None and record.output_tokens is not None:
        usage = (record.input_tokens, record.output_tokens)
        if limit is not None and record.output_tokens > limit:
            return Reply(content="", usage=(record.input_tokens, limit), truncated=True)
    logprob = record.logprob if logprobs else None
    return Reply(content=record.answer, usage=usage, logprob=logprob, top_logprobs=top_logprobs)
