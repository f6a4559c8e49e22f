"""FrugalChatModel over real ChatOpenAI clients against the local replay server."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ValidationError

from frugal_langchain import FrugalChatModel
from shared_scorer import CascadeError, ConfigurationError, TokenPrice, UnknownPriceError
from shared_scorer.fitting.data import Record, load_records
from shared_scorer.server.testing import make_record, replay_server
from shared_scorer.tokens import estimate_prompt_tokens

SMALL, BIG = "replay-small", "replay-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(tokens_in, tokens_out)


def chat(server: Any, model: str, **options: Any) -> ChatOpenAI:
    options.setdefault("timeout", 5)
    return ChatOpenAI(model=model, base_url=server.base_url, api_key="test", max_retries=0, **options)


def by_answer(table: dict[str, float], default: float = 0.0):
    return lambda query, answer: table.get(answer, default)


QUESTION = "Who wrote Middlemarch?"
RECORDS = [
    make_record(QUESTION, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(QUESTION, "George Eliot", model=BIG, input_tokens=12, output_tokens=4),
    make_record("Capital of France?", "Paris", model=SMALL, input_tokens=8, output_tokens=1),
    make_record("Capital of France?", "Paris, France", model=BIG, input_tokens=8, output_tokens=3),
]
SCORES = {"Charles Dickens": 0.2, "Paris": 0.95}


@pytest.fixture
def server():
    with replay_server(RECORDS, hang_seconds=3) as server:
        yield server


@pytest.fixture
def llm(server):
    return FrugalChatModel(
        stages=[chat(server, SMALL), chat(server, BIG)], scorer=by_answer(SCORES), thresholds=[0.7], prices=PRICES
    )


def test_chain_escalates_and_reports_exact_cost(llm):
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | llm
    message = chain.invoke({"question": QUESTION})
    assert message.content == "George Eliot"
    trail = message.response_metadata["frugal"]
    assert message.response_metadata["model_name"] == BIG
    assert [(s["model"], s["status"], s["score"]) for s in trail["stages"]] == [
        (SMALL, "rejected", 0.2),
        (BIG, "accepted", None),
    ]
    assert Decimal(trail["cost_usd"]) == cost(SMALL, 12, 3) + cost(BIG, 12, 4) == Decimal("0.0001305")
    assert message.usage_metadata == {"input_tokens": 24, "output_tokens": 7, "total_tokens": 31}
    assert (chain | StrOutputParser()).invoke({"question": "Capital of France?"}) == "Paris"
    summary = llm.cost_tracker.summary(decimals=True)
    assert summary["calls"] == 2 and summary["escalations"] == 1
    assert summary["total_cost_usd"] == Decimal("0.0001305") + cost(SMALL, 8, 1)


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ("429", "OpenAIRateLimitError"),
        ("500", "OpenAIAPIError"),
        ("hang", "OpenAITimeoutError"),
        ("malformed", "JSONDecodeError"),
        ("garbage", "TypeError"),
    ],
)
def test_every_fault_escalates_and_is_recorded(server, fault, error_type):
    llm = FrugalChatModel(
        stages=[chat(server, SMALL, timeout=1), chat(server, BIG)],
        scorer=lambda q, a: 1.0,
        thresholds=[0.5],
        prices=PRICES,
    )
    server.set_fault(SMALL, fault)
    message = llm.invoke("Capital of France?")
    assert message.content == "Paris, France"
    first = message.response_metadata["frugal"]["stages"][0]
    assert first["status"] == "error"
    assert first["error"].startswith(error_type + ":"), first["error"]
    assert Decimal(first["cost_usd"]) == 0
    assert Decimal(message.response_metadata["frugal"]["cost_usd"]) == cost(BIG, 8, 3)


def test_every_stage_failing_raises_one_error(server, llm):
    server.set_fault(SMALL, "500")
    server.set_fault(BIG, "429")
    with pytest.raises(CascadeError) as info:
        llm.invoke(QUESTION)
    assert [(f.model, f.kind) for f in info.value.failures] == [(SMALL, "error"), (BIG, "error")]
    assert "RateLimitError" in str(info.value)
    assert llm.cost_tracker.summary()["failed_calls"] == 1


def test_streaming_buffers_rejected_stage_and_streams_last_live():
    long_answer = "George Eliot, the pen name of Mary Ann Evans, wrote Middlemarch in 1871 and 1872."
    with replay_server(
        [RECORDS[0], make_record(QUESTION, long_answer, model=BIG, input_tokens=12, output_tokens=20)]
    ) as other:
        llm = FrugalChatModel(
            stages=[chat(other, SMALL, stream_usage=True), chat(other, BIG, stream_usage=True)],
            scorer=by_answer(SCORES),
            thresholds=[0.7],
            prices=PRICES,
        )
        chunks = list(llm.stream(QUESTION))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 2, "the last stage must arrive in several chunks"
    assert "".join(texts) == long_answer
    assert "Charles Dickens" not in "".join(texts)
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.usage_metadata == {"input_tokens": 24, "output_tokens": 23, "total_tokens": 47}
    assert Decimal(full.response_metadata["frugal"]["cost_usd"]) == cost(SMALL, 12, 3) + cost(BIG, 12, 20)
    assert chunks[-1].chunk_position == "last"


async def test_async_stream_of_an_accepted_first_stage(llm):
    chunks = [chunk async for chunk in llm.astream("Capital of France?")]
    assert "".join(str(c.content) for c in chunks) == "Paris"
    assert chunks[-1].response_metadata["frugal"]["stage"] == 0


async def test_abatch_runs_concurrently_with_exact_totals(llm):
    messages = await llm.abatch([QUESTION, "Capital of France?"] * 3)
    assert [m.content for m in messages] == ["George Eliot", "Paris"] * 3
    summary = llm.cost_tracker.summary(decimals=True)
    assert summary["calls"] == 6
    assert summary["total_cost_usd"] == 3 * (cost(SMALL, 12, 3) + cost(BIG, 12, 4) + cost(SMALL, 8, 1))
    assert summary["answered_by_stage"] == {0: 3, 1: 3}


class _ChildRuns(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[tuple[UUID, UUID | None, list[str]]] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, tags=None, **kwargs):
        self.starts.append((run_id, parent_run_id, tags or []))


def test_stage_calls_are_child_runs_in_callbacks(llm):
    handler = _ChildRuns()
    llm.invoke(QUESTION, config={"callbacks": [handler]})
    (root, parent, _), *children = handler.starts
    assert parent is None
    assert [(p, "frugal:stage=0" in t or "frugal:stage=1" in t) for _, p, t in children] == [(root, True)] * 2


class Person(BaseModel):
    name: str
    born: int


def test_structured_output_that_fails_validation_escalates():
    scenarios = [
        {"model": SMALL, "match": "Middlemarch", "tool_calls": [{"name": "Person", "arguments": {"name": "Eliot"}}]},
        {
            "model": BIG,
            "match": "Middlemarch",
            "tool_calls": [{"name": "Person", "arguments": {"name": "George Eliot", "born": 1819}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10},
        },
    ]
    with replay_server(scenarios=scenarios) as server:
        llm = FrugalChatModel(
            stages=[chat(server, SMALL), chat(server, BIG)], scorer=lambda q, a: 1.0, thresholds=[0.5], prices=PRICES
        )
        out = llm.with_structured_output(Person, include_raw=True).invoke("Who wrote Middlemarch, born when?")
    assert out["parsed"] == Person(name="George Eliot", born=1819)
    first = out["raw"].response_metadata["frugal"]["stages"][0]
    assert first["status"] == "invalid"
    assert "'born' is a required property" in first["error"]


def test_tool_call_with_unparseable_or_misfit_arguments_escalates():
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    scenarios = [
        {"model": SMALL, "match": "Paris", "tool_calls": [{"name": "get_weather", "arguments": '{"city": '}]},
        {"model": SMALL, "match": "Rome", "tool_calls": [{"name": "get_weather", "arguments": {"city": 5}}]},
        {"model": BIG, "match": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "X"}}]},
    ]
    with replay_server(scenarios=scenarios) as server:
        llm = FrugalChatModel(
            stages=[chat(server, SMALL), chat(server, BIG)], scorer=lambda q, a: 1.0, thresholds=[0.5], prices=PRICES
        ).bind_tools([get_weather])
        paris = llm.invoke("Weather in Paris?")
        rome = llm.invoke("Weather in Rome?")
    for message, reason in ((paris, "arguments do not parse"), (rome, "5 is not of type 'string'")):
        assert message.tool_calls[0]["args"] == {"city": "X"}
        first = message.response_metadata["frugal"]["stages"][0]
        assert first["status"] == "invalid" and reason in first["error"], first["error"]


def test_tool_calling_agent_with_recorded_scenario():
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"It is sunny and 21 C in {city}."

    scenarios = [
        # the cheap model first writes a broken call, escalating to the big one ...
        {"model": SMALL, "match": "weather in Paris", "tool_calls": [{"name": "get_weather", "arguments": "{city"}]},
        {
            "model": BIG,
            "match": "weather in Paris",
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
            "usage": {"prompt_tokens": 80, "completion_tokens": 15},
        },
        # ... and after the tool ran, the cheap model's summary is accepted.
        {
            "model": SMALL,
            "match": "weather in Paris",
            "after_tool": True,
            "content": "It is sunny and 21 C in Paris.",
            "usage": {"prompt_tokens": 120, "completion_tokens": 12},
        },
    ]
    with replay_server(scenarios=scenarios) as server:
        llm = FrugalChatModel(
            stages=[chat(server, SMALL), chat(server, BIG)], scorer=lambda q, a: 0.9, thresholds=[0.5], prices=PRICES
        )
        agent = create_agent(llm, tools=[get_weather])
        state = agent.invoke({"messages": [("human", "What is the weather in Paris?")]})
    ai = [m for m in state["messages"] if m.type == "ai"]
    tool_messages = [m for m in state["messages"] if m.type == "tool"]
    assert tool_messages[0].content == "It is sunny and 21 C in Paris."
    assert ai[-1].content == "It is sunny and 21 C in Paris."
    assert [m.response_metadata["frugal"]["model"] for m in ai] == [BIG, SMALL]
    assert ai[0].response_metadata["frugal"]["stages"][0]["status"] == "invalid"
    # the broken call's provider reported no usage: it is estimated (flagged), never billed as $0
    broken = ai[0].response_metadata["frugal"]["stages"][0]
    estimated_in = estimate_prompt_tokens(["What is the weather in Paris?"], SMALL)
    assert (broken["input_tokens"], broken["output_tokens"], broken["usage_estimated"]) == (estimated_in, 0, True)
    total = sum((Decimal(m.response_metadata["frugal"]["cost_usd"]) for m in ai), Decimal(0))
    assert total == cost(SMALL, estimated_in, 0) + cost(BIG, 80, 15) + cost(SMALL, 120, 12)


def test_rag_chain_with_local_minilm_embeddings():
    from langchain_core.runnables import RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    from frugal_langchain.embeddings import MiniLMEmbeddings

    store = InMemoryVectorStore(MiniLMEmbeddings())
    store.add_texts(
        [
            "Middlemarch is a novel by George Eliot, published in 1871-72.",
            "Paris is the capital and largest city of France.",
            "The Rhine flows from the Swiss Alps to the North Sea.",
        ]
    )
    retriever = store.as_retriever(search_kwargs={"k": 1})
    prompt = ChatPromptTemplate.from_messages(
        [("human", "Answer from the context.\nContext: {context}\nQuestion: {question}")]
    )
    scenarios = [
        {
            "model": SMALL,
            "match": "Question: Who is the author of Middlemarch?",
            "content": "George Eliot.",
            "usage": {"prompt_tokens": 40, "completion_tokens": 3},
        }
    ]
    with replay_server(scenarios=scenarios) as server:
        llm = FrugalChatModel(
            stages=[chat(server, SMALL), chat(server, BIG)], scorer=lambda q, a: 0.8, thresholds=[0.5], prices=PRICES
        )
        chain = (
            {"context": retriever | (lambda docs: docs[0].page_content), "question": RunnablePassthrough()}
            | prompt
            | llm
        )
        message = chain.invoke("Who is the author of Middlemarch?")
        sent = server.requests[0].query
    assert "Middlemarch is a novel by George Eliot" in sent
    assert message.content == "George Eliot."
    assert Decimal(message.response_metadata["frugal"]["cost_usd"]) == cost(SMALL, 40, 3) == Decimal("0.0000245")


def test_recorded_simpleqa_rows_replay_with_their_billed_cost(datasets):
    path = datasets / "recorded" / "simpleqa" / "test.jsonl"
    prices = json.loads((datasets / "recorded" / "prices.json").read_text())
    cheap, best = "gemini-3-flash-preview", "gemini-3.1-pro-preview"
    records = [r for r in load_records(path) if r.model in (cheap, best)]
    rows: dict[tuple[str, str], Record] = {(r.query_id, r.model): r for r in records}
    queries = [r for r in records if r.model == cheap and (r.query_id, best) in rows][:20]
    assert len(queries) == 20
    correct = {(r.model, r.answer): r.correct for r in records}
    with replay_server(records) as server:
        llm = FrugalChatModel(
            stages=[chat(server, cheap), chat(server, best)],
            scorer=lambda q, a: correct.get((cheap, a), 0.0),  # an oracle for the test, from the labels
            thresholds=[0.5],
            prices={m: (p["input_per_mtok"], p["output_per_mtok"]) for m, p in prices.items()},
        )
        messages = llm.batch([r.query for r in queries], config={"max_concurrency": 4})
    for record, message in zip(queries, messages, strict=True):
        other = rows[(record.query_id, best)]
        expected = record if record.correct == 1.0 else other
        assert message.content == expected.answer
        trail = message.response_metadata["frugal"]
        billed = Decimal(str(record.cost_usd)) + (Decimal(str(other.cost_usd)) if expected is other else 0)
        assert abs(Decimal(trail["cost_usd"]) - billed) < Decimal("1e-9"), (trail["cost_usd"], billed)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"stages": []}, ConfigurationError, "at least one stage"),
        ({"thresholds": []}, ConfigurationError, "2 stages need 1 threshold"),
        ({"thresholds": [1.5]}, ConfigurationError, "threshold 0 must be in \\[0, 1\\]"),
        ({"stages": ["gpt-4o", "gpt-4o-mini"]}, ConfigurationError, "stage 0 must be a LangChain chat model"),
        ({"prices": {}}, UnknownPriceError, "no known price for model 'replay-small'"),
    ],
)
def test_bad_construction_fails_at_once(server, kwargs, error, message):
    args = {
        "stages": [chat(server, SMALL), chat(server, BIG)],
        "scorer": lambda q, a: 1.0,
        "thresholds": [0.5],
        "prices": PRICES,
    }
    args.update(kwargs)
    with pytest.raises(error, match=message):
        FrugalChatModel(**args)


def test_missing_scorer_is_a_validation_error():
    with pytest.raises(ValidationError, match="scorer"):
        FrugalChatModel(stages=[GenericFakeChatModel(messages=iter([]))], thresholds=[])


@pytest.mark.parametrize("streaming", [False, True])
def test_a_stage_cut_at_its_output_cap_escalates_and_pays_the_capped_tokens(server, streaming):
    # SMALL's recorded answer used 3 output tokens: capped at 2, the provider cuts it (finish_reason "length")
    llm = FrugalChatModel(
        stages=[chat(server, SMALL, max_tokens=2, stream_usage=True), chat(server, BIG, stream_usage=True)],
        scorer=by_answer({"Charles Dickens": 1.0}),
        thresholds=[0.7],
        prices=PRICES,
    )
    message = "".join(c.text for c in llm.stream(QUESTION)) if streaming else llm.invoke(QUESTION).text
    assert message == "George Eliot"
    trail = llm.cost_tracker.summary(decimals=True)
    assert trail["escalations"] == 1 and trail["total_cost_usd"] == cost(SMALL, 12, 2) + cost(BIG, 12, 4)
    first = llm.invoke(QUESTION).response_metadata["frugal"]["stages"][0]
    assert first["status"] == "invalid" and "output-token limit" in first["error"]
    assert (first["output_tokens"], Decimal(first["cost_usd"])) == (2, cost(SMALL, 12, 2))
    # a cap the answer fits under changes nothing
    roomy = FrugalChatModel(
        stages=[chat(server, SMALL, max_tokens=3), chat(server, BIG)],
        scorer=by_answer({"Charles Dickens": 1.0}),
        thresholds=[0.7],
        prices=PRICES,
    )
    assert roomy.invoke(QUESTION).text == "Charles Dickens"
