"""The call-path matrix: every entry point of both adapters and of ``frugal serve`` keeps the same promises.

For each cell a two-stage cascade runs over real clients against one local replay server: stage 0's
answer is rejected (or its tool call does not parse), stage 1's is accepted. The cell is called as
ann, as ann again (a cache hit) and as bob (a miss); :func:`tests.integration._paths.check_cell` checks
that the call's scope reaches the answer cache, the budget and the ledger, that the trail's cost is
exactly what the replay server billed, stage by stage, and that each stage call is a child run of the
cascade's run where the framework has runs.
"""

from __future__ import annotations

import asyncio
import functools
import operator
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import httpx
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike
from pydantic import Field

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer.server.testing import replay_server
from tests.conftest import require
from tests.integration._paths import (
    A1,
    A2,
    BIG,
    MAX_TOKENS,
    PRICES,
    Q1,
    Q2,
    RECORDS,
    SCENARIOS,
    SMALL,
    TOOL_Q,
    TOOL_TEXT,
    WEATHER_SCHEMA,
    Reply,
    Rig,
    check_cell,
    get_weather,
    scorer,
    tool_text,
)

STAGE = {SMALL: 0, BIG: 1}


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with replay_server(RECORDS, scenarios=SCENARIOS) as server:
        yield server


@pytest.fixture(scope="module")
def run() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """One event loop for every async call of the module (clients cache connections per loop)."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


# ---------------------------------------------------------------------------------------------- LangChain


class LangChainRuns(BaseCallbackHandler):
    """Records chat-model run starts; a cascade run is one without a parent among them."""

    def __init__(self) -> None:
        self.starts: list[tuple[UUID, UUID | None, list[str]]] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, tags=None, **kwargs):  # type: ignore[no-untyped-def]
        self.starts.append((run_id, parent_run_id, list(tags or [])))

    def reset(self) -> None:
        self.starts.clear()

    def children(self) -> list[list[int]]:
        ids = {run_id for run_id, _, _ in self.starts}
        roots = [run_id for run_id, parent, _ in self.starts if parent not in ids]
        return [sorted(_stage_of(tags) for _, parent, tags in self.starts if parent == root) for root in roots]


class EventRuns:
    """The same, read from ``astream_events`` (v2): stage events name the cascade's run in ``parent_ids``."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.events.clear()

    def children(self) -> list[list[int]]:
        starts = [e for e in self.events if e["event"] == "on_chat_model_start"]
        roots = [e["run_id"] for e in starts if not e["parent_ids"]]
        return [sorted(_stage_of(e["tags"]) for e in starts if root in e["parent_ids"]) for root in roots]


def _stage_of(tags: list[str]) -> int:
    stages = [int(t.split("=", 1)[1]) for t in tags if t.startswith("frugal:stage=")]
    return stages[0] if len(stages) == 1 else -1


def lc_stage(server: Any, model: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=model, base_url=server.base_url, api_key="test", max_retries=0, timeout=5, max_tokens=MAX_TOKENS,
        **options,
    )  # fmt: skip


def lc_model(server: Any, rig: Rig, **options: Any) -> FrugalChatModel:
    return FrugalChatModel(
        stages=[lc_stage(server, SMALL, **options), lc_stage(server, BIG, **options)], scorer=scorer,
        thresholds=[0.5], prices=PRICES, answer_cache=rig.cache, budget=rig.budget, cost_tracker=rig.tracker,
    )  # fmt: skip


def lc_reply(message: Any) -> Reply:
    calls = [(c["name"], c["args"]) for c in getattr(message, "tool_calls", None) or []]
    text = tool_text(calls) if calls else str(message.content)
    return Reply(text, (message.response_metadata or {}).get("frugal"))


def lc_chunks(chunks: list[Any]) -> Reply:
    full = lc_reply(functools.reduce(operator.add, chunks))
    trails = [c.response_metadata["frugal"] for c in chunks if "frugal" in (c.response_metadata or {})]
    return Reply(full.text, trails[-1] if trails else None)


def _lc_cells() -> dict[str, tuple[Callable[..., Any], list[str]]]:
    def events(llm: Any, cfg: Any, run: Any, runs: EventRuns) -> list[Reply]:
        async def go() -> None:
            runs.events.extend([e async for e in llm.astream_events(Q1, config=cfg, version="v2")])

        run(go())
        root = next(e["run_id"] for e in runs.events if e["event"] == "on_chat_model_start" and not e["parent_ids"])
        chunks = [
            e["data"]["chunk"] for e in runs.events if e["event"] == "on_chat_model_stream" and e["run_id"] == root
        ]
        return [lc_chunks(chunks)]

    def stream(llm: Any, q: str, cfg: Any) -> list[Reply]:
        return [lc_chunks(list(llm.stream(q, config=cfg)))]

    def astream(llm: Any, cfg: Any, run: Any) -> list[Reply]:
        async def go() -> list[Any]:
            return [c async for c in llm.astream(Q1, config=cfg)]

        return [lc_chunks(run(go()))]

    tools = [get_weather]
    return {
        "invoke": (lambda llm, cfg, run, _: [lc_reply(llm.invoke(Q1, config=cfg))], [A1]),
        "ainvoke": (lambda llm, cfg, run, _: [lc_reply(run(llm.ainvoke(Q1, config=cfg)))], [A1]),
        "batch": (lambda llm, cfg, run, _: [lc_reply(m) for m in llm.batch([Q1, Q2], config=cfg)], [A1, A2]),
        "abatch": (lambda llm, cfg, run, _: [lc_reply(m) for m in run(llm.abatch([Q1, Q2], config=cfg))], [A1, A2]),
        "stream": (lambda llm, cfg, run, _: stream(llm, Q1, cfg), [A1]),
        "astream": (lambda llm, cfg, run, _: astream(llm, cfg, run), [A1]),
        "astream_events": (events, [A1]),
        "tools-invoke": (lambda llm, cfg, run, _: [lc_reply(llm.bind_tools(tools).invoke(TOOL_Q, cfg))], [TOOL_TEXT]),
        "tools-stream": (lambda llm, cfg, run, _: stream(llm.bind_tools(tools), TOOL_Q, cfg), [TOOL_TEXT]),
    }  # fmt: skip


LC_CELLS = _lc_cells()


@pytest.mark.parametrize("path", list(LC_CELLS))
def test_langchain_path(server, run, path):
    rig = Rig()
    llm = lc_model(server, rig)
    fn, expected = LC_CELLS[path]
    runs: Any = EventRuns() if path == "astream_events" else LangChainRuns()

    def call(user: str) -> list[Reply]:
        config = {"metadata": {"tenant": "acme", "user": user}, "callbacks": [] if path == "astream_events" else [runs]}
        return fn(llm, config, run, runs)  # type: ignore[no-any-return]

    check_cell(server, rig, call, expected, runs)


# ---------------------------------------------------------------------------------------------- LlamaIndex


class _StageStarts(BaseEventHandler):
    """Records the span and model of every LLM chat start event (a stage call)."""

    starts: list[tuple[str | None, str]] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "StageStarts"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMChatStartEvent):
            self.starts.append((event.span_id, str(event.model_dict.get("model_name"))))


class LlamaIndexRuns:
    """Instrumentation: a stage call's start event must sit under the span of the cascade's call."""

    def __init__(self) -> None:
        self.spans = SimpleSpanHandler()
        self.events = _StageStarts(starts=[])

    @contextmanager
    def installed(self) -> Iterator[LlamaIndexRuns]:
        root = get_dispatcher()
        root.add_span_handler(self.spans)
        root.add_event_handler(self.events)
        try:
            yield self
        finally:
            root.span_handlers.remove(self.spans)
            root.event_handlers.remove(self.events)

    def reset(self) -> None:
        self.events.starts.clear()
        self.spans.open_spans.clear()
        self.spans.completed_spans.clear()
        self.spans.dropped_spans.clear()

    def children(self) -> list[list[int]]:
        spans = [*self.spans.open_spans.values(), *self.spans.completed_spans, *self.spans.dropped_spans]
        parent = {s.id_: s.parent_id for s in spans}

        def cascade_of(span: str | None) -> str | None:
            """The outermost FrugalLLM span above (or at) ``span``."""
            found = None
            while span is not None:
                if is_call(span):
                    found = span
                span = parent.get(span)
            return found

        def is_call(span: str) -> bool:  # FrugalLLM.chat-..., not FrugalLLM._prepare_chat_with_tools-...
            return span.startswith("FrugalLLM.") and not span.startswith("FrugalLLM._")

        roots = list(dict.fromkeys(r for r in (cascade_of(s.id_) for s in spans) if r is not None))
        under: dict[str | None, list[int]] = {root: [] for root in roots}
        for span_id, model in self.events.starts:
            under.setdefault(cascade_of(span_id), []).append(STAGE.get(model, -1))
        return [sorted(stages) for stages in under.values()]


def li_stage(server: Any, model: str) -> OpenAILike:
    return OpenAILike(
        model=model, api_base=server.base_url, api_key="test", is_chat_model=True, is_function_calling_model=True,
        context_window=8192, max_retries=0, timeout=5, max_tokens=MAX_TOKENS,
    )  # fmt: skip


def li_reply(response: Any) -> Reply:
    return Reply(response.message.content or "", response.additional_kwargs.get("frugal"))


def li_last(responses: list[Any]) -> Reply:
    text = getattr(responses[-1], "text", None)
    text = text if text is not None else responses[-1].message.content or ""
    trails = [r.additional_kwargs["frugal"] for r in responses if "frugal" in (r.additional_kwargs or {})]
    return Reply(text, trails[-1] if trails else None)


def _li_cells() -> dict[str, tuple[Callable[..., list[Reply]], list[str]]]:
    msgs = [ChatMessage(role="user", content=Q1)]
    weather = FunctionTool.from_defaults(fn=get_weather)

    async def agen(pending: Any) -> list[Any]:
        return [r async for r in await pending]

    def with_tools(llm: Any, who: dict[str, str]) -> list[Reply]:
        response = llm.chat_with_tools([weather], user_msg=TOOL_Q, **who)
        calls = [(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(response)]
        return [Reply(tool_text(calls), response.additional_kwargs.get("frugal"))]

    def predict(llm: Any, who: dict[str, str]) -> list[Reply]:
        out = llm.predict_and_call([weather], TOOL_Q, **who)
        assert out.response == "sunny in Paris", out.response
        source = out.sources[0]
        return [Reply(tool_text([(source.tool_name, source.raw_input["kwargs"])]), None, trail_expected=False)]

    return {
        "chat": (lambda llm, who, run: [li_reply(llm.chat(msgs, **who))], [A1]),
        "achat": (lambda llm, who, run: [li_reply(run(llm.achat(msgs, **who)))], [A1]),
        "stream_chat": (lambda llm, who, run: [li_last(list(llm.stream_chat(msgs, **who)))], [A1]),
        "astream_chat": (lambda llm, who, run: [li_last(run(agen(llm.astream_chat(msgs, **who))))], [A1]),
        "complete": (lambda llm, who, run: [li_last([llm.complete(Q1, **who)])], [A1]),
        "acomplete": (lambda llm, who, run: [li_last([run(llm.acomplete(Q1, **who))])], [A1]),
        "stream_complete": (lambda llm, who, run: [li_last(list(llm.stream_complete(Q1, **who)))], [A1]),
        "astream_complete": (lambda llm, who, run: [li_last(run(agen(llm.astream_complete(Q1, **who))))], [A1]),
        "chat_with_tools": (lambda llm, who, run: with_tools(llm, who), [TOOL_TEXT]),
        "predict_and_call": (lambda llm, who, run: predict(llm, who), [TOOL_TEXT]),
    }


LI_CELLS = _li_cells()


def li_model(server: Any, rig: Rig) -> FrugalLLM:
    return FrugalLLM(
        stages=[li_stage(server, SMALL), li_stage(server, BIG)], scorer=scorer, thresholds=[0.5], prices=PRICES,
        answer_cache=rig.cache, budget=rig.budget, cost_tracker=rig.tracker,
    )  # fmt: skip


@pytest.mark.parametrize("path", list(LI_CELLS))
def test_llamaindex_path(server, run, path):
    rig = Rig()
    llm = li_model(server, rig)
    fn, expected = LI_CELLS[path]
    runs = LlamaIndexRuns()
    with runs.installed():
        check_cell(server, rig, lambda user: fn(llm, {"tenant": "acme", "user": user}, run), expected, runs)


# ---------------------------------------------------------------------------------------------- frugal serve

KEYS = {"sk-ann": {"tenant": "acme", "user": "ann"}, "sk-bob": {"tenant": "acme", "user": "bob"}}


@contextmanager
def serving(server: Any, rig: Rig, framework: str) -> Iterator[str]:
    """``frugal serve --framework ...``'s app over ``rig`` under uvicorn on 127.0.0.1; yields its ``/v1`` URL."""
    from frugal_langchain.serve import LangChainBackend
    from frugal_llamaindex.serve import LlamaIndexBackend
    from shared_scorer.server.gateway import make_app
    from shared_scorer.server.testing import serving as serve_app

    backend: Any
    if framework == "langchain":
        # the app's own event loop gets its own HTTP client (LangChain caches one per base URL)
        backend = LangChainBackend(lc_model(server, rig, http_async_client=httpx.AsyncClient(timeout=5)))
    else:
        backend = LlamaIndexBackend(li_model(server, rig))
    with serve_app(make_app(backend, KEYS, rig.budget)) as base_url:
        yield base_url


def serve_call(base_url: str, user: str, *, stream: bool, tools: bool) -> list[Reply]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=f"sk-{user}", max_retries=0, timeout=10)
    extra: dict[str, Any] = {"tools": [WEATHER_SCHEMA]} if tools else {}
    messages: Any = [{"role": "user", "content": TOOL_Q if tools else Q1}]
    if not stream:
        reply = client.chat.completions.create(model="frugal", messages=messages, **extra)
        message = reply.choices[0].message
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
        return [Reply(tool_text(calls) if calls else message.content or "", (reply.model_extra or {}).get("frugal"))]
    chunks = list(client.chat.completions.create(model="frugal", messages=messages, stream=True, **extra))
    text, calls = "", {}
    for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                name, args = calls.get(call.index, ("", ""))
                fn = call.function
                calls[call.index] = (name + (fn.name or "" if fn else ""), args + (fn.arguments or "" if fn else ""))
    trails = [c.model_extra["frugal"] for c in chunks if (c.model_extra or {}).get("frugal") is not None]
    return [Reply(tool_text([calls[i] for i in sorted(calls)]) if calls else text, trails[-1] if trails else None)]


@pytest.mark.parametrize("tools", [False, True], ids=["plain", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["unstreamed", "streamed"])
@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_serve_path(server, framework, stream, tools):
    import importlib.util

    require(importlib.util.find_spec("uvicorn") is not None, "uvicorn is not installed (pip install uvicorn)")
    rig = Rig()
    with serving(server, rig, framework) as base_url:
        check_cell(
            server,
            rig,
            lambda user: serve_call(base_url, user, stream=stream, tools=tools),
            [TOOL_TEXT if tools else A1],
        )
