"""``frugal serve`` over real HTTP on 127.0.0.1, driven by the ``openai`` client, on both backends.

Every case that uses the ``served`` fixture runs once over LangChain (``FrugalChatModel`` on ``ChatOpenAI``
stages) and once over LlamaIndex (``FrugalLLM`` on ``OpenAILike`` stages): the gateway is the same, so
what a client sees, pays and is refused must be the same too.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest

from shared_scorer import TokenPrice
from shared_scorer.budget import Budget, LedgerCostTracker, LedgerError, Limit, MemoryLedger
from shared_scorer.budget.redis_server import free_port
from shared_scorer.context import Scope
from shared_scorer.server.replay import ReplayServer
from shared_scorer.server.testing import make_record, replay_server, serving
from tests.conftest import require

SMALL, BIG = "serve-small", "serve-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
QUESTION = "Who wrote Middlemarch?"
LONG = "Retell Middlemarch in full."
LONG_ANSWER = "George Eliot wrote it. " + "Dorothea marries Casaubon. " * 1500  # ~40 kB, 2,000 stream chunks
RECORDS = [
    make_record(QUESTION, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(QUESTION, "George Eliot, the pen name of Mary Ann Evans", model=BIG, input_tokens=12, output_tokens=9),
    make_record(LONG, "no idea", model=SMALL, input_tokens=8, output_tokens=2),
    make_record(LONG, LONG_ANSWER, model=BIG, input_tokens=8, output_tokens=5000),
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
BOOK_SCHEMA = {
    "name": "book",
    "schema": {"type": "object", "properties": {"author": {"type": "string"}}, "required": ["author"]},
}
SCENARIOS = [
    {"model": "*", "match": "weather in Paris", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
     "usage": {"prompt_tokens": 30, "completion_tokens": 7}},
    {"model": "*", "match": "Which author", "tool_calls": [{"name": "book", "arguments": {"author": "George Eliot"}}],
     "usage": {"prompt_tokens": 25, "completion_tokens": 6}},
]  # fmt: skip
KEYS = {
    "sk-acme": {"tenant": "acme", "user": "svc"},
    "sk-broke": {"tenant": "broke"},
    "sk-team": {"tenant": "team"},  # the request's "user" names the user
}


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(tokens_in, tokens_out)


def scorer(query: str, answer: str) -> float:
    return 0.9 if answer.startswith("George") else 0.1


FRAMEWORKS = ["langchain", "llamaindex"]


@dataclass
class Served:
    base_url: str
    budget: Budget
    replay: ReplayServer
    framework: str


def chat_stages(replay: ReplayServer, max_tokens: int | None = 50, timeout: float = 5) -> list[Any]:
    from langchain_openai import ChatOpenAI

    return [
        ChatOpenAI(model=m, base_url=replay.base_url, api_key="x", max_retries=0, timeout=timeout,
                   max_tokens=max_tokens, stream_usage=True)
        for m in (SMALL, BIG)
    ]  # fmt: skip


def index_stages(replay: ReplayServer, max_tokens: int | None = 50, timeout: float = 5) -> list[Any]:
    from llama_index.llms.openai_like import OpenAILike

    return [
        OpenAILike(model=m, api_base=replay.base_url, api_key="x", is_chat_model=True, is_function_calling_model=True,
                   max_retries=0, timeout=timeout, max_tokens=max_tokens)
        for m in (SMALL, BIG)
    ]  # fmt: skip


def require_serve(framework: str = "langchain") -> None:
    packages = ("uvicorn", "starlette") + (("llama_index.llms.openai_like",) if framework == "llamaindex" else ())
    for package in packages:
        require(importlib.util.find_spec(package) is not None, f"{package} is not installed (pip install {package})")


def backend(framework: str, replay: ReplayServer, max_tokens: int | None = 50, **options: Any) -> Any:
    """A two-stage cascade over ``replay`` (SMALL, then BIG at threshold 0.5) as a serve backend."""
    options = {"scorer": scorer, "thresholds": [0.5], "prices": PRICES, **options}
    if framework == "langchain":
        from frugal_langchain import FrugalChatModel
        from frugal_langchain.serve import LangChainBackend

        return LangChainBackend(FrugalChatModel(stages=chat_stages(replay, max_tokens), **options))
    from frugal_llamaindex import FrugalLLM
    from frugal_llamaindex.serve import LlamaIndexBackend

    return LlamaIndexBackend(FrugalLLM(stages=index_stages(replay, max_tokens), **options))


def strategy_backend(framework: str, base_url: str, **options: Any) -> Any:
    """A backend for :func:`strategy` as ``frugal serve --framework FRAMEWORK`` builds it."""
    module = importlib.import_module(f"frugal_{framework}.serve")
    return module.serve_backend(strategy(), base_url=base_url, api_key="x", scorer=scorer, prices=PRICES, **options)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    framework = request.param
    require_serve(framework)
    from shared_scorer.server.gateway import make_app

    budget = Budget(MemoryLedger(), [Limit("tenant", "1", period="day"), Limit("tenant", "0.0001", tenant="broke")])
    with replay_server(RECORDS, SCENARIOS) as replay:
        app = make_app(backend(framework, replay, budget=budget), KEYS, budget, max_body_bytes=4096)
        with serving(app) as base_url:
            yield Served(base_url, budget, replay, framework)


def client(base_url: str, key: str, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=max_retries, timeout=10)


def ask(served: Served, key: str = "sk-acme", **options: Any) -> Any:
    messages = options.pop("messages", [{"role": "user", "content": QUESTION}])
    return client(served.base_url, key).chat.completions.create(model="frugal", messages=messages, **options)


def test_plain_completion_escalates_and_charges_the_keys_tenant(served):
    base_url, budget = served.base_url, served.budget
    before = budget.status(Scope("acme", "svc"))[0].spent_usd
    reply = client(base_url, "sk-acme").chat.completions.create(
        model="frugal", messages=[{"role": "user", "content": QUESTION}]
    )
    assert reply.choices[0].message.content == "George Eliot, the pen name of Mary Ann Evans"
    assert reply.model == BIG and reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (24, 12)
    trail = reply.model_extra["frugal"]
    assert [s["status"] for s in trail["stages"]] == ["rejected", "accepted"]
    expected = cost(SMALL, 12, 3) + cost(BIG, 12, 9)
    assert Decimal(trail["cost_usd"]) == expected
    assert budget.status(Scope("acme", "svc"))[0].spent_usd - before == expected


def test_streaming_completion(served):
    base_url = served.base_url
    stream = client(base_url, "sk-acme").chat.completions.create(
        model="frugal", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "George Eliot, the pen name of Mary Ann Evans"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "streamed in pieces"
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and last.model == BIG
    assert last.usage.total_tokens == 36


def test_invalid_or_missing_key_is_refused(served):
    base_url = served.base_url
    with pytest.raises(openai.AuthenticationError) as info:
        client(base_url, "sk-wrong").chat.completions.create(model="f", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    import httpx

    assert httpx.post(f"{base_url}/chat/completions", json={"messages": []}).status_code == 401
    assert client(base_url, "sk-acme").models.list().data[0].id == "frugal-cascade"


def test_budget_scope_follows_the_key(served):
    base_url, budget = served.base_url, served.budget
    with pytest.raises(openai.RateLimitError) as info:
        client(base_url, "sk-broke").chat.completions.create(
            model="f", messages=[{"role": "user", "content": QUESTION}]
        )
    assert info.value.status_code == 429 and info.value.code == "budget_exceeded"
    assert "tenant 'broke' daily limit $0.0001: spent $0.00 + held $0.00, this stage (serve-small)" in str(info.value)
    assert budget.status(Scope("broke"))[0].spent_usd == 0


# ------------------------------------------------------------------------------- bad input, limits


@pytest.mark.parametrize("value", [-5, "abc", -1_000_000_000, True, 0, 2.5])
def test_hostile_max_tokens_is_a_400_and_calls_no_stage(served, value):
    before = served.replay.request_count()
    for key in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as info:
            ask(served, extra_body={key: value})
        assert info.value.status_code == 400 and info.value.param == key
        assert info.value.body["message"].startswith(f"'{key}' must be a positive integer, got ")
    assert served.replay.request_count() == before


def test_request_max_tokens_only_lowers_each_stages_cap(served):
    def caps_sent(**options: Any) -> list[int | None]:
        served.replay.clear_requests()
        ask(served, **options)
        return [bill.max_tokens for bill in served.replay.bills]

    assert caps_sent() == [50, 50]  # the stages' own caps
    assert caps_sent(max_tokens=1000) == [50, 50]  # a request never raises a stage's cap
    assert caps_sent(max_tokens=20) == [20, 20]
    assert caps_sent(max_completion_tokens=30, max_tokens=40) == [30, 30]


def test_strategy_caps_are_kept_and_max_tokens_caps_only_the_uncapped_stages():
    require_serve()
    from frugal_langchain import FrugalChatModel
    from frugal_langchain.serve import openai_stages
    from shared_scorer.cli import build_parser

    args = build_parser().parse_args(["serve", "--strategy", "s.json", "--keys", "k.json", "--stages-base-url", "u"])
    assert (args.max_tokens, args.stage_timeout, args.stage_retries, args.max_body_bytes) == (None, 60.0, 1, 1 << 20)
    stages = openai_stages(strategy(), base_url="http://127.0.0.1:9/v1", api_key="x", max_tokens=1024)
    assert {m: (s.max_tokens, s.request_timeout, s.max_retries, s.stream_usage) for m, s in stages.items()} == {
        SMALL: (1024, 60.0, 1, True),
        BIG: (None, 60.0, 1, True),
    }
    model = FrugalChatModel.from_strategy(strategy(), stages, scorer=scorer, prices=PRICES)
    assert [s.max_tokens for s in model.stages] == [1024, 40]  # BIG@40: the learned cap, not --max-tokens


def test_llamaindex_stages_keep_the_same_caps_timeouts_and_retries():
    require_serve("llamaindex")
    from frugal_llamaindex.serve import openai_like_stages
    from shared_scorer.cli import build_parser

    args = build_parser().parse_args(["serve", "--strategy", "s", "--keys", "k", "--stages-base-url", "u"])
    assert args.framework == "langchain"
    args = build_parser().parse_args(["serve", "--strategy", "s", "--keys", "k", "--stages-base-url", "u",
                                      "--framework", "llamaindex"])  # fmt: skip
    assert args.framework == "llamaindex"
    stages = openai_like_stages(strategy(), base_url="http://127.0.0.1:9/v1", api_key="x", max_tokens=1024)
    assert {m: (s.max_tokens, s.timeout, s.max_retries, s.is_function_calling_model) for m, s in stages.items()} == {
        SMALL: (1024, 60.0, 1, True),
        BIG: (None, 60.0, 1, True),
    }
    llm = strategy_backend("llamaindex", "http://127.0.0.1:9/v1", max_tokens=1024).llm
    assert [s.max_tokens for s in llm.stages] == [1024, 40]  # BIG@40: the learned cap, not --max-tokens


def strategy() -> Any:
    from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

    point = FrontierPoint((SMALL, f"{BIG}@40"), (0.5,), accuracy=0.9, cost=0.001, reach=(1.0, 0.5))
    return Strategy.from_frontier(Frontier([point]), scorer="scorer", data_fingerprint="f" * 64)


def test_body_over_the_limit_is_a_413(served):
    import httpx

    before = served.replay.request_count()
    with pytest.raises(openai.APIStatusError) as info:
        ask(served, messages=[{"role": "user", "content": "x" * 5000}])
    assert info.value.status_code == 413 and info.value.code == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds on what is actually sent
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    headers = {"authorization": "Bearer sk-acme", "content-type": "application/json"}
    reply = httpx.post(f"{served.base_url}/chat/completions", content=chunked(), headers=headers)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert httpx.post(f"{served.base_url}/chat/completions", content=b"{nope", headers=headers).status_code == 400
    assert served.replay.request_count() == before


# ------------------------------------------------------------------------------- failures


def test_all_stages_failed_is_not_retried_by_the_sdk(served):
    served.replay.clear_requests()
    served.replay.set_fault("*", "500")
    try:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client(served.base_url, "sk-acme", max_retries=2).chat.completions.create(
                model="frugal", messages=[{"role": "user", "content": QUESTION}]
            )
    finally:
        served.replay.clear_faults()
    assert served.replay.request_count() == 2, "one client call, one call per stage"
    assert info.value.status_code == 422 and info.value.code == "all_stages_failed"
    assert info.value.response.headers["x-should-retry"] == "false"
    trail = info.value.body["frugal"] if "frugal" in info.value.body else info.value.response.json()["frugal"]
    assert [(s["model"], s["status"]) for s in trail["stages"]] == [(SMALL, "error"), (BIG, "error")]


def test_a_hanging_stage_times_out_and_escalates(served):
    from shared_scorer.server.gateway import make_app

    app = make_app(strategy_backend(served.framework, served.replay.base_url, timeout_s=0.5, max_retries=0), KEYS)
    served.replay.set_fault(SMALL, "hang", 1)
    started = time.monotonic()
    with serving(app) as base_url:
        reply = client(base_url, "sk-acme").chat.completions.create(
            model="frugal", messages=[{"role": "user", "content": QUESTION}]
        )
    assert time.monotonic() - started < 8
    assert reply.choices[0].message.content == "George Eliot, the pen name of Mary Ann Evans"
    stages_trail = reply.model_extra["frugal"]["stages"]
    assert [(s["model"], s["status"]) for s in stages_trail] == [(SMALL, "error"), (BIG, "accepted")]


# ------------------------------------------------------------------------------- tools, structured output


def test_tools_and_tool_choice_reach_the_stages(served):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = ask(served, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto")
    (call,) = reply.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert reply.choices[0].finish_reason == "tool_calls"
    # a schema-valid tool call is accepted at the cheap stage under the default tool_call_policy="validate"
    assert Decimal(reply.model_extra["frugal"]["cost_usd"]) == cost(SMALL, 30, 7)
    assert [s["status"] for s in reply.model_extra["frugal"]["stages"]] == ["accepted", "not_called"]
    chunks = list(ask(served, messages=messages, tools=[WEATHER_TOOL], stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert Decimal(chunks[-1].model_extra["frugal"]["cost_usd"]) == cost(SMALL, 30, 7)


def test_response_format_json_schema_is_answered_as_json(served):
    messages = [{"role": "user", "content": "Which author wrote Middlemarch?"}]
    reply = ask(served, messages=messages, response_format={"type": "json_schema", "json_schema": BOOK_SCHEMA})
    assert json.loads(reply.choices[0].message.content) == {"author": "George Eliot"}
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason == "stop"
    plain = ask(served, response_format={"type": "json_object"})
    assert plain.choices[0].message.content == "George Eliot, the pen name of Mary Ann Evans"
    with pytest.raises(openai.BadRequestError) as info:
        ask(served, response_format={"type": "xml"})
    assert info.value.param == "response_format"


# ------------------------------------------------------------------------------- scope: cache, ledger


def test_answer_cache_is_scoped_by_the_keys_user_on_every_path(served):
    from shared_scorer.cache import AnswerCache, HashingEmbedder
    from shared_scorer.server.gateway import make_app

    cache = AnswerCache(embedder=HashingEmbedder())
    replay = served.replay
    with serving(make_app(backend(served.framework, replay, answer_cache=cache), KEYS)) as base_url:

        def calls(user: str, stream: bool) -> tuple[str, int]:
            before = replay.request_count()
            messages = [{"role": "user", "content": QUESTION}]
            api = client(base_url, "sk-team").chat.completions
            if stream:
                chunks = list(api.create(model="f", messages=messages, user=user, stream=True))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                text = api.create(model="f", messages=messages, user=user).choices[0].message.content
            return text, replay.request_count() - before

        answer = "George Eliot, the pen name of Mary Ann Evans"
        assert calls("ann", stream=False) == (answer, 2)
        assert calls("ann", stream=False) == (answer, 0)  # ann's own cached answer
        assert calls("bob", stream=False) == (answer, 2)  # never ann's
        assert calls("carol", stream=True) == (answer, 2)
        assert calls("dave", stream=True) == (answer, 2)  # never carol's, streamed or not
        assert calls("carol", stream=False) == (answer, 0)
        assert calls("ann", stream=True) == (answer, 0)
    assert cache.backend.count() == 4  # one entry per user


def test_ledger_down_fails_closed_and_never_shows_the_password(served, caplog):
    import httpx

    from shared_scorer.budget.redis_ledger import RedisLedger
    from shared_scorer.server.gateway import make_app

    require(importlib.util.find_spec("redis") is not None, "the redis package is not installed (pip install redis)")
    caplog.set_level(logging.DEBUG)
    budget = Budget(RedisLedger(f"redis://:s3cret@127.0.0.1:{free_port()}/0"), [Limit("tenant", "1")])

    before = served.replay.request_count()
    with serving(make_app(backend(served.framework, served.replay, budget=budget), KEYS, budget)) as base_url:
        with pytest.raises(openai.InternalServerError) as info:
            client(base_url, "sk-acme").chat.completions.create(
                model="f", messages=[{"role": "user", "content": QUESTION}]
            )
        body = {"model": "f", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
        streamed = httpx.post(f"{base_url}/chat/completions", json=body, headers={"authorization": "Bearer sk-acme"})
    assert info.value.status_code == 503 and info.value.code == "ledger_unavailable"
    assert streamed.status_code == 503 and streamed.json()["error"]["code"] == "ledger_unavailable"
    assert served.replay.request_count() == before, "no provider call without a ledger"
    assert "s3cret" not in info.value.response.text + streamed.text
    assert "s3cret" not in caplog.text
    assert "redis://:***@127.0.0.1" in caplog.text, "the log names the ledger, password hidden"


def test_client_that_hangs_up_mid_stream_is_charged_what_the_provider_billed(served):
    import httpx

    from shared_scorer.server.gateway import make_app

    ledger = MemoryLedger()
    budget = Budget(ledger, [Limit("tenant", "10", period="day")])
    tracker = LedgerCostTracker(ledger)
    model = backend(served.framework, served.replay, max_tokens=8192, budget=budget, cost_tracker=tracker)

    served.replay.clear_requests()
    body = {"model": "f", "messages": [{"role": "user", "content": LONG}], "stream": True}
    with serving(make_app(model, KEYS, budget)) as base_url:
        headers = {"authorization": "Bearer sk-acme"}
        with httpx.stream("POST", f"{base_url}/chat/completions", json=body, headers=headers) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]  # a few chunks of the answer, then hang up
        assert any("George Eliot" in line for line in received)
        billed = sum((cost(b.model, b.input_tokens, b.output_tokens) for b in served.replay.bills), Decimal(0))
        assert billed == cost(SMALL, 8, 2) + cost(BIG, 8, 5000)
        deadline = time.monotonic() + 10
        while budget.status(Scope("acme", "svc"))[0].spent_usd != billed and time.monotonic() < deadline:
            time.sleep(0.05)
    status = budget.status(Scope("acme", "svc"))[0]
    assert (status.spent_usd, status.held_usd) == (billed, 0)
    assert sum((r.cost_usd for r in ledger.records()), Decimal(0)) == billed
    assert {(r.tenant, r.user) for r in ledger.records()} == {("acme", "svc")}


class SettleFailsOnce(MemoryLedger):
    """A ledger that fails once between reserve and settle (as Redis going down mid-call would)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    def settle(self, rid: str, keys: Any, actual_nano: int) -> None:
        if not self.failed:
            self.failed += 1
            raise LedgerError("Redis ledger at redis://:***@127.0.0.1:1/0 (prefix 'frugal'): ConnectionError")
        super().settle(rid, keys, actual_nano)


def test_ledger_failing_between_reserve_and_settle_keeps_the_paid_answer_and_records_it(served, caplog):
    from shared_scorer.server.gateway import make_app

    ledger = SettleFailsOnce()
    budget = Budget(ledger, [Limit("tenant", "10", period="day")])
    model = backend(served.framework, served.replay, budget=budget, cost_tracker=LedgerCostTracker(ledger))
    with serving(make_app(model, KEYS, budget)) as base_url:
        reply = client(base_url, "sk-acme").chat.completions.create(
            model="f", messages=[{"role": "user", "content": QUESTION}]
        )
    assert reply.choices[0].message.content == "George Eliot, the pen name of Mary Ann Evans"
    expected = cost(SMALL, 12, 3) + cost(BIG, 12, 9)
    assert Decimal(reply.model_extra["frugal"]["cost_usd"]) == expected
    assert ledger.failed == 1
    assert sum((r.cost_usd for r in ledger.records()), Decimal(0)) == expected, "the paid cost is recorded"
    assert str(cost(SMALL, 12, 3)) in caplog.text, "the unsettled amount is logged"


# ------------------------------------------------------------------------------- both backends, one strategy


def test_a_message_without_a_known_role_is_a_400_and_calls_no_stage(served):
    before = served.replay.request_count()
    for messages in ([{"role": "robot", "content": "hi"}], ["hi"]):
        with pytest.raises(openai.BadRequestError) as info:
            ask(served, messages=messages)
        assert info.value.param == "messages" and "has no known role" in info.value.body["message"]
    assert served.replay.request_count() == before


def without_latency(value: Any) -> Any:
    """``value`` with every ``latency_ms`` left out (the one figure two runs need not share)."""
    if isinstance(value, dict):
        return {k: without_latency(v) for k, v in value.items() if k != "latency_ms"}
    if isinstance(value, list):
        return [without_latency(v) for v in value]
    return value


def test_the_same_strategy_served_through_both_backends_gives_the_same_trails_and_costs():
    require_serve("llamaindex")
    from shared_scorer.server.gateway import make_app

    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    book = {"type": "json_schema", "json_schema": BOOK_SCHEMA}
    queries: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": QUESTION}]},
        {"messages": [{"role": "user", "content": QUESTION}], "stream": True},
        {"messages": weather, "tools": [WEATHER_TOOL]},
        {"messages": [{"role": "user", "content": "Which author wrote Middlemarch?"}], "response_format": book},
    ]
    seen: dict[str, Any] = {}
    with replay_server(RECORDS, SCENARIOS) as replay:
        for framework in FRAMEWORKS:
            ledger = MemoryLedger()
            tracker = LedgerCostTracker(ledger)
            app = make_app(strategy_backend(framework, replay.base_url, max_retries=0, cost_tracker=tracker), KEYS)
            answers, trails = [], []
            with serving(app) as base_url:
                api = client(base_url, "sk-acme").chat.completions
                for query in queries:
                    if query.get("stream"):
                        chunks = list(api.create(model="f", **query))
                        answers.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
                        trails.append(chunks[-1].model_extra["frugal"])
                        continue
                    reply = api.create(model="f", **query)
                    message = reply.choices[0].message
                    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
                    answers.append(message.content or calls)
                    trails.append(reply.model_extra["frugal"])
            records = [(r.tenant, r.user, r.model, r.cost_usd) for r in ledger.records()]
            seen[framework] = (answers, without_latency(trails), records)
    assert seen["langchain"] == seen["llamaindex"]
    answers, trails, records = seen["langchain"]
    eliot = "George Eliot, the pen name of Mary Ann Evans"
    assert answers == [eliot, eliot, [("get_weather", {"city": "Paris"})], '{"author": "George Eliot"}']
    assert [t["cost_usd"] for t in trails] == [
        str(cost(SMALL, 12, 3) + cost(BIG, 12, 9)),
        str(cost(SMALL, 12, 3) + cost(BIG, 12, 9)),
        # a schema-valid tool call (and a structured answer, a forced call) is accepted at the cheap stage
        str(cost(SMALL, 30, 7)),
        str(cost(SMALL, 25, 6)),
    ]
    assert sum((r[3] for r in records), Decimal(0)) == sum((Decimal(t["cost_usd"]) for t in trails), Decimal(0))


# ------------------------------------------------------------------------------- the command


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_frugal_serve_command_serves_the_strategy_on_either_framework(framework, tmp_path, monkeypatch):
    """``frugal serve --framework F`` through ``main``: keys file, ledger, limits and the backend it builds
    (the scorer is the test's: the command would load the strategy's DistilBERT checkpoint)."""
    require_serve(framework)
    import uvicorn

    from shared_scorer.budget import SQLiteLedger
    from shared_scorer.cli import main

    module = importlib.import_module(f"frugal_{framework}.serve")
    build = module.serve_backend
    monkeypatch.setattr(module, "serve_backend", lambda *a, **kw: build(*a, scorer=scorer, prices=PRICES, **kw))
    replies: list[Any] = []

    def run(app: Any, host: str, port: int) -> None:  # instead of blocking: serve, ask once, stop
        assert (host, port) == ("127.0.0.1", 8000)
        with serving(app) as base_url:
            replies.append(client(base_url, "sk-acme").chat.completions.create(
                model="f", messages=[{"role": "user", "content": QUESTION}]))  # fmt: skip

    monkeypatch.setattr(uvicorn, "run", run)
    strategy().save(tmp_path / "strategy.json")
    (tmp_path / "keys.json").write_text(json.dumps(KEYS))
    ledger = tmp_path / "ledger.db"
    with replay_server(RECORDS, SCENARIOS) as replay:
        argv = ["serve", "--framework", framework, "--strategy", str(tmp_path / "strategy.json"),
                "--keys", str(tmp_path / "keys.json"), "--stages-base-url", replay.base_url,
                "--ledger", str(ledger), "--limit", "tenant=1/day", "--max-tokens", "50"]  # fmt: skip
        assert main(argv) == 0
    (reply,) = replies
    assert reply.choices[0].message.content == "George Eliot, the pen name of Mary Ann Evans"
    expected = cost(SMALL, 12, 3) + cost(BIG, 12, 9)
    assert Decimal(reply.model_extra["frugal"]["cost_usd"]) == expected
    records = SQLiteLedger(ledger).records()
    assert [(r.tenant, r.user) for r in records] == [("acme", "svc"), ("acme", "svc")]
    assert sum((r.cost_usd for r in records), Decimal(0)) == expected


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_frugal_serve_without_the_frameworks_extra_names_it(framework, tmp_path, monkeypatch, capsys):
    import sys

    from shared_scorer.cli import main

    monkeypatch.setitem(sys.modules, f"frugal_{framework}.serve", None)  # as if the extra were not installed
    argv = ["serve", "--framework", framework, "--strategy", str(tmp_path / "s.json"), "--keys",
            str(tmp_path / "k.json"), "--stages-base-url", "http://127.0.0.1:9/v1", "--ledger", "memory:"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"frugal serve: error: frugal serve --framework {framework} needs ")
    assert f"'frugal-cascade[serve,{framework}]'" in err and err.count("\n") == 1


def test_stop_reaches_langchain_stages_and_is_a_400_on_llamaindex(served):
    """LlamaIndex's ``FrugalLLM`` takes no per-call ``stop`` (README: the one difference between backends)."""
    before = served.replay.request_count()
    if served.framework == "langchain":
        assert ask(served, stop=["zzz"]).choices[0].message.content == "George Eliot, the pen name of Mary Ann Evans"
        assert served.replay.request_count() - before == 2
        return
    with pytest.raises(openai.BadRequestError) as info:
        ask(served, stop=["zzz"])
    assert "unknown per-call keyword 'stop'" in info.value.body["message"]
    assert served.replay.request_count() == before
