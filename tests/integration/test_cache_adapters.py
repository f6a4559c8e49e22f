"""AnswerCache through both adapters, over real OpenAI clients against the local replay server."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer import TokenPrice
from shared_scorer.cache import AnswerCache, HashingEmbedder
from shared_scorer.server.testing import make_record, replay_server

SMALL, BIG = "replay-small", "replay-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
QUESTION = "Who wrote Middlemarch?"
RECORDS = [
    make_record(QUESTION, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(QUESTION, "George Eliot", model=BIG, input_tokens=12, output_tokens=4),
    make_record("How big is it?", "Small", model=SMALL, input_tokens=20, output_tokens=1),
    make_record("How big is it?", "Big", model=BIG, input_tokens=20, output_tokens=1),
    make_record("Who wrote Great Expectations?", "Dickens", model=SMALL, input_tokens=12, output_tokens=2),
]
SCORES = {"Charles Dickens": 0.2, "Small": 0.9, "Dickens": 0.9}
FIRST_COST = TokenPrice(*PRICES[SMALL]).cost(12, 3) + TokenPrice(*PRICES[BIG]).cost(12, 4)


@pytest.fixture
def server():
    with replay_server(RECORDS) as server:
        yield server


def chat(server: Any, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=server.base_url, api_key="test", max_retries=0, timeout=5)


def like(server: Any, model: str) -> OpenAILike:
    return OpenAILike(
        model=model, api_base=server.base_url, api_key="test", is_chat_model=True, context_window=8192,
        max_retries=0, timeout=5,
    )  # fmt: skip


def lc_model(server: Any, cache: AnswerCache, **options: Any) -> FrugalChatModel:
    return FrugalChatModel(
        stages=[chat(server, SMALL), chat(server, BIG)], scorer=lambda q, a: SCORES.get(a, 0.0), thresholds=[0.7],
        prices=PRICES, answer_cache=cache, **options,
    )  # fmt: skip


def li_model(server: Any, cache: AnswerCache, **options: Any) -> FrugalLLM:
    return FrugalLLM(
        stages=[like(server, SMALL), like(server, BIG)], scorer=lambda q, a: SCORES.get(a, 0.0), thresholds=[0.7],
        prices=PRICES, answer_cache=cache, **options,
    )  # fmt: skip


def test_langchain_chain_hit_costs_nothing_and_calls_no_model(server):
    cache = AnswerCache(embedder=HashingEmbedder())
    llm = lc_model(server, cache, tenant="acme", user="ann")
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    assert (prompt | llm | StrOutputParser()).invoke({"question": QUESTION}) == "George Eliot"
    assert server.request_count() == 2
    message = (prompt | llm).invoke({"question": "who wrote middlemarch"})
    assert server.request_count() == 2
    trail = message.response_metadata["frugal"]
    assert message.content == "George Eliot" and Decimal(trail["cost_usd"]) == 0
    assert trail["cache_hit"]["similarity"] == 1.0 and Decimal(trail["cache_hit"]["saved_usd"]) == FIRST_COST
    assert len(trail["cache_hit"]["entry_id"]) == 32 and trail["model"] == BIG
    summary = llm.cost_tracker.summary(decimals=True)
    assert summary["cache_hits"] == 1 and summary["cache_saved_usd"] == FIRST_COST
    assert summary["total_cost_usd"] == FIRST_COST


def test_langchain_per_call_scope_from_config_metadata(server):
    cache = AnswerCache(embedder=HashingEmbedder())
    llm = lc_model(server, cache)
    ann = {"metadata": {"tenant": "acme", "user": "ann"}}
    bob = {"metadata": {"tenant": "acme", "user": "bob"}}
    llm.invoke(QUESTION, config=ann)
    assert llm.invoke(QUESTION, config=bob).response_metadata["frugal"]["cache_hit"] is None
    assert llm.invoke(QUESTION, config=ann).response_metadata["frugal"]["cache_hit"] is not None
    assert llm.invoke(QUESTION).response_metadata["frugal"]["cache_hit"] is None  # default scope
    assert server.request_count() == 6


def test_langchain_multi_turn_same_last_question_misses(server):
    cache = AnswerCache(embedder=HashingEmbedder())
    llm = lc_model(server, cache)
    paris = [("human", "Tell me about Paris"), ("ai", "A city."), ("human", "How big is it?")]
    rome = [("human", "Tell me about Rome"), ("ai", "A city."), ("human", "How big is it?")]
    assert llm.invoke(paris).content == "Small"
    assert llm.invoke(rome).response_metadata["frugal"]["cache_hit"] is None
    assert llm.invoke(paris).response_metadata["frugal"]["cache_hit"] is not None
    with_system = [("system", "Answer in French."), ("human", "How big is it?")]
    assert llm.invoke(with_system).response_metadata["frugal"]["cache_hit"] is None


def test_llamaindex_hit_with_keyword_scope(server):
    cache = AnswerCache(embedder=HashingEmbedder())
    llm = li_model(server, cache)
    first = llm.chat([ChatMessage(role="user", content=QUESTION)], tenant="acme", user="ann")
    assert first.message.content == "George Eliot" and server.request_count() == 2
    other = llm.chat([ChatMessage(role="user", content=QUESTION)], tenant="globex", user="ann")
    assert other.additional_kwargs["frugal"]["cache_hit"] is None and server.request_count() == 4
    hit = llm.complete("Who wrote Middlemarch", tenant="acme", user="ann")
    assert hit.text == "George Eliot" and server.request_count() == 4
    trail = hit.additional_kwargs["frugal"]
    assert Decimal(trail["cost_usd"]) == 0 and Decimal(trail["cache_hit"]["saved_usd"]) == FIRST_COST


def test_both_adapters_share_one_cache_for_the_same_conversation(server):
    cache = AnswerCache(embedder=HashingEmbedder())
    lc_model(server, cache, tenant="acme", user="ann").invoke(QUESTION)
    response = li_model(server, cache, tenant="acme", user="ann").chat([ChatMessage(role="user", content=QUESTION)])
    assert response.additional_kwargs["frugal"]["cache_hit"] is not None and server.request_count() == 2


async def test_async_langchain_hit(server):
    cache = AnswerCache(embedder=HashingEmbedder())
    llm = lc_model(server, cache)
    await llm.ainvoke(QUESTION)
    message = await llm.ainvoke(QUESTION)
    assert message.response_metadata["frugal"]["cache_hit"] is not None and server.request_count() == 2


def test_real_minilm_semantic_hit_through_the_chain(server):
    """The local MiniLM finds the reworded question; a permissive verifier confirms it."""

    class Confirm:
        min_similarity = 0.8

        def confirm(self, query, cached, similarities):
            return [True] * len(cached)

    cache = AnswerCache(verifier=Confirm())  # default embedder: the local all-MiniLM-L6-v2
    llm = lc_model(server, cache)
    llm.invoke(QUESTION)
    message = llm.invoke("Who is the author of Middlemarch?")
    hit = message.response_metadata["frugal"]["cache_hit"]
    assert message.content == "George Eliot" and 0.8 <= hit["similarity"] < 1.0
    other = llm.invoke("Who wrote Great Expectations?")
    assert other.content == "Dickens" and other.response_metadata["frugal"]["cache_hit"] is None


def test_feedback_from_either_adapters_trail_stops_a_wrong_answer(server):
    from shared_scorer.context import Scope

    cache = AnswerCache(embedder=HashingEmbedder(), max_wrong_rate=0.05)
    llm = lc_model(server, cache, tenant="acme", user="ann")
    assert llm.invoke(QUESTION).content == "George Eliot" and server.request_count() == 2
    hit = llm.invoke("who wrote middlemarch").response_metadata["frugal"]["cache_hit"]
    assert hit is not None and server.request_count() == 2
    assert cache.feedback(hit["entry_id"], False, Scope("acme", "bob")) is None  # not bob's entry
    state = cache.feedback(hit["entry_id"], False, Scope("acme", "ann"))
    assert state is not None and (state["wrong"], state["exact_allowed"]) == (1, False)
    assert llm.invoke(QUESTION).response_metadata["frugal"]["cache_hit"] is None  # the stages answer again
    assert server.request_count() == 4
    li = li_model(server, cache)
    li.chat([ChatMessage(role="user", content="Who wrote Great Expectations?")], tenant="acme", user="ann")
    again = li.complete("Who wrote Great Expectations", tenant="acme", user="ann")
    entry_id = again.additional_kwargs["frugal"]["cache_hit"]["entry_id"]
    confirmed = cache.feedback(entry_id, True, Scope("acme", "ann"))
    assert confirmed is not None and (confirmed["confirmed"], confirmed["wrong"]) == (1, 0)
