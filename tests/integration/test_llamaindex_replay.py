"""FrugalLLM over real OpenAILike clients against the local replay server."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import MockLLM
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel

from frugal_llamaindex import FrugalLLM
from shared_scorer import CascadeError, ConfigurationError, TokenPrice, UnknownPriceError
from shared_scorer.server.testing import make_record, replay_server

SMALL, BIG = "replay-small", "replay-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
QUESTION = "Who wrote Middlemarch?"
RECORDS = [
    make_record(QUESTION, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(QUESTION, "George Eliot", model=BIG, input_tokens=12, output_tokens=4),
    make_record("Capital of France?", "Paris", model=SMALL, input_tokens=8, output_tokens=1),
    make_record("Capital of France?", "Paris, France", model=BIG, input_tokens=8, output_tokens=3),
]
SCORES = {"Charles Dickens": 0.2, "Paris": 0.95}


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(tokens_in, tokens_out)


def like(server: Any, model: str, **options: Any) -> OpenAILike:
    options.setdefault("timeout", 5)
    return OpenAILike(
        model=model,
        api_base=server.base_url,
        api_key="test",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=8192,
        max_retries=0,
        **options,
    )


def frugal(server: Any, scorer: Any = None, **options: Any) -> FrugalLLM:
    return FrugalLLM(
        stages=[like(server, SMALL, **options), like(server, BIG)],
        scorer=scorer or (lambda q, a: SCORES.get(a, 0.0)),
        thresholds=[0.7],
        prices=PRICES,
    )


@pytest.fixture
def server():
    with replay_server(RECORDS, hang_seconds=3) as server:
        yield server


def test_chat_escalates_with_trail_and_exact_cost(server):
    llm = frugal(server)
    response = llm.chat([ChatMessage(role="user", content=QUESTION)])
    assert response.message.content == "George Eliot"
    trail = response.additional_kwargs["frugal"]
    assert [(s["model"], s["status"], s["score"]) for s in trail["stages"]] == [
        (SMALL, "rejected", 0.2),
        (BIG, "accepted", None),
    ]
    assert Decimal(trail["cost_usd"]) == cost(SMALL, 12, 3) + cost(BIG, 12, 4) == Decimal("0.0001305")
    assert response.additional_kwargs["model_name"] == BIG
    completion = llm.complete("Capital of France?")
    assert completion.text == "Paris" and completion.additional_kwargs["frugal"]["stage"] == 0
    assert llm.cost_tracker.summary(decimals=True)["total_cost_usd"] == Decimal("0.0001305") + cost(SMALL, 8, 1)


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ("429", "RateLimitError"),
        ("500", "InternalServerError"),
        ("hang", "APITimeoutError"),
        ("malformed", "JSONDecodeError"),
        ("garbage", "TypeError"),
    ],
)
def test_every_fault_escalates_and_is_recorded(server, fault, error_type):
    llm = frugal(server, scorer=lambda q, a: 1.0, timeout=1)
    server.set_fault(SMALL, fault)
    response = llm.chat([ChatMessage(role="user", content="Capital of France?")])
    assert response.message.content == "Paris, France"
    first = response.additional_kwargs["frugal"]["stages"][0]
    assert first["status"] == "error" and first["error"].startswith(error_type + ":"), first["error"]
    assert Decimal(response.additional_kwargs["frugal"]["cost_usd"]) == cost(BIG, 8, 3)


def test_all_stages_failing_raises_one_error(server):
    server.set_fault("*", "500")
    with pytest.raises(CascadeError) as info:
        frugal(server).complete(QUESTION)
    assert [f.model for f in info.value.failures] == [SMALL, BIG]


def test_stream_chat_streams_the_last_stage_live():
    answer = "George Eliot, the pen name of Mary Ann Evans, wrote Middlemarch in 1871 and 1872."
    records = [RECORDS[0], make_record(QUESTION, answer, model=BIG, input_tokens=12, output_tokens=20)]
    usage = {"stream_options": {"include_usage": True}}
    with replay_server(records) as server:
        llm = FrugalLLM(
            stages=[like(server, SMALL, additional_kwargs=usage), like(server, BIG, additional_kwargs=usage)],
            scorer=lambda q, a: SCORES.get(a, 0.0),
            thresholds=[0.7],
            prices=PRICES,
        )
        responses = list(llm.stream_complete(QUESTION))
    deltas = [r.delta for r in responses if r.delta]
    assert len(deltas) > 2 and "".join(deltas) == answer
    final = responses[-1]
    assert final.text == answer
    assert Decimal(final.additional_kwargs["frugal"]["cost_usd"]) == cost(SMALL, 12, 3) + cost(BIG, 12, 20)


async def test_async_chat_and_stream(server):
    llm = frugal(server)
    response = await llm.achat([ChatMessage(role="user", content=QUESTION)])
    assert response.message.content == "George Eliot"
    stream = await llm.astream_chat([ChatMessage(role="user", content="Capital of France?")])
    items = [r async for r in stream]
    assert items[-1].message.content == "Paris" and items[-1].additional_kwargs["frugal"]["stage"] == 0


def test_token_counting_handler_sees_every_stage_call(server):
    counter = TokenCountingHandler()
    llm = frugal(server)
    llm.callback_manager = CallbackManager([counter])
    llm.complete(QUESTION)
    assert len(counter.llm_token_counts) == 2
    assert counter.prompt_llm_token_count == 24
    assert counter.completion_llm_token_count == 7


def _tools() -> list[FunctionTool]:
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"It is sunny in {city}."

    def get_time(city: str) -> str:
        """Local time in a city."""
        return f"It is noon in {city}."

    return [FunctionTool.from_defaults(get_weather), FunctionTool.from_defaults(get_time)]


def test_predict_and_call_escalates_on_broken_arguments():
    scenarios = [
        {"model": SMALL, "match": "Paris", "tool_calls": [{"name": "get_weather", "arguments": '{"city": '}]},
        {"model": BIG, "match": "Paris", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    ]
    with replay_server(scenarios=scenarios) as server:
        llm = frugal(server, scorer=lambda q, a: 1.0)
        output = llm.predict_and_call(_tools(), "Weather in Paris?")
    assert output.response == "It is sunny in Paris."


async def test_function_agent_with_two_tools():
    from llama_index.core.agent.workflow import FunctionAgent

    scenarios = [
        {"model": SMALL, "match": "time in Rome", "tool_calls": [{"name": "get_time", "arguments": {"city": 7}}]},
        {"model": BIG, "match": "time in Rome", "tool_calls": [{"name": "get_time", "arguments": {"city": "Rome"}}]},
        {"model": SMALL, "match": "time in Rome", "after_tool": True, "content": "It is noon in Rome."},
    ]
    with replay_server(scenarios=scenarios) as server:
        llm = frugal(server, scorer=lambda q, a: 0.9)
        agent = FunctionAgent(tools=_tools(), llm=llm)
        result = await agent.run("What is the time in Rome?")
        models = [r.model for r in server.requests]
    assert str(result) == "It is noon in Rome."
    assert models == [SMALL, BIG, SMALL]


class Person(BaseModel):
    name: str
    born: int


def test_structured_predict_escalates_on_invalid_output():
    from llama_index.core.prompts import PromptTemplate

    scenarios = [
        {"model": SMALL, "match": "Middlemarch", "tool_calls": [{"name": "Person", "arguments": {"name": "Eliot"}}]},
        {
            "model": BIG,
            "match": "Middlemarch",
            "tool_calls": [{"name": "Person", "arguments": {"name": "George Eliot", "born": 1819}}],
        },
    ]
    with replay_server(scenarios=scenarios) as server:
        llm = frugal(server, scorer=lambda q, a: 1.0)
        person = llm.structured_predict(Person, PromptTemplate("Who wrote {book}?"), book="Middlemarch")
        structured = llm.as_structured_llm(Person).complete("Who wrote Middlemarch?")
    assert person == Person(name="George Eliot", born=1819)
    assert structured.raw == Person(name="George Eliot", born=1819)
    assert [r.model for r in server.requests] == [SMALL, BIG, SMALL, BIG]


def test_rag_query_engine_with_local_minilm_embeddings():
    from llama_index.core import Document, VectorStoreIndex

    from frugal_llamaindex.embeddings import MiniLMEmbedding

    scenarios = [
        {
            "model": SMALL,
            "match": "Who is the author of Middlemarch?",
            "content": "George Eliot.",
            "usage": {"prompt_tokens": 90, "completion_tokens": 3},
        }
    ]
    docs = [
        Document(text="Middlemarch is a novel by George Eliot, published in 1871-72."),
        Document(text="Paris is the capital and largest city of France."),
        Document(text="The Rhine flows from the Swiss Alps to the North Sea."),
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=MiniLMEmbedding())
    with replay_server(scenarios=scenarios) as server:
        llm = frugal(server, scorer=lambda q, a: 0.8)
        response = index.as_query_engine(llm=llm, similarity_top_k=1).query("Who is the author of Middlemarch?")
        sent = server.requests[0].query
    assert str(response) == "George Eliot."
    assert "Middlemarch is a novel by George Eliot" in sent
    assert llm.cost_tracker.summary(decimals=True)["total_cost_usd"] == cost(SMALL, 90, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"stages": []}, ConfigurationError, "at least one stage"),
        ({"thresholds": []}, ConfigurationError, "2 stages need 1 threshold"),
        ({"thresholds": [-0.1]}, ConfigurationError, "threshold 0 must be in \\[0, 1\\]"),
        ({"stages": ["gpt-4o", "gpt-4o-mini"]}, ConfigurationError, "stage 0 must be a LlamaIndex LLM"),
        ({"prices": {}}, UnknownPriceError, "no known price for model 'replay-small'"),
    ],
)
def test_bad_construction_fails_at_once(server, kwargs, error, message):
    args = {"stages": [like(server, SMALL), like(server, BIG)], "scorer": lambda q, a: 1.0, "thresholds": [0.5]}
    args["prices"] = PRICES
    args.update(kwargs)
    with pytest.raises(error, match=message):
        FrugalLLM(**args)


def test_works_as_settings_llm_with_mock_stages():
    from llama_index.core import Settings

    previous = Settings._llm
    try:
        Settings.llm = FrugalLLM(
            stages=[MockLLM(max_tokens=3), MockLLM()],
            scorer=lambda q, a: 0.9,
            thresholds=[0.5],
            prices={"MockLLM": (0, 0)},
        )
        assert Settings.llm.complete("abc").additional_kwargs["frugal"]["stage"] == 0
    finally:
        Settings._llm = previous


def test_a_stage_cut_at_its_output_cap_escalates_and_pays_the_capped_tokens(server):
    llm = FrugalLLM(
        stages=[like(server, SMALL, max_tokens=2), like(server, BIG)],
        scorer=lambda q, a: 1.0,
        thresholds=[0.7],
        prices=PRICES,
    )
    response = llm.chat([ChatMessage(role="user", content=QUESTION)])
    assert response.message.content == "George Eliot"
    first = response.additional_kwargs["frugal"]["stages"][0]
    assert first["status"] == "invalid" and "output-token limit" in first["error"]
    assert llm.cost_tracker.summary(decimals=True)["total_cost_usd"] == cost(SMALL, 12, 2) + cost(BIG, 12, 4)
