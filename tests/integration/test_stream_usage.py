"""Real cost on streams: usage asked for where the client supports it, estimated and flagged where a
provider reports none, and a stream the caller stops reading settled at what was produced so far."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer import TokenPrice
from shared_scorer.budget import Budget, Limit, MemoryLedger
from shared_scorer.context import Scope
from shared_scorer.server.testing import make_record, replay_server
from shared_scorer.tokens import estimate_prompt_tokens, estimate_tokens

SMALL, BIG = "replay-small", "replay-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
QUESTION = "Who wrote Middlemarch?"
LONG = "George Eliot, the pen name of Mary Ann Evans, wrote Middlemarch in 1871 and 1872. " * 4
RECORDS = [
    make_record(QUESTION, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(QUESTION, LONG, model=BIG, input_tokens=12, output_tokens=80),
]


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(tokens_in, tokens_out)


BILLED = cost(SMALL, 12, 3) + cost(BIG, 12, 80)


@pytest.fixture(scope="module")
def server():
    with replay_server(RECORDS) as server:
        yield server


def chat(server: Any, model: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=server.base_url, api_key="x", max_retries=0, timeout=5, **options)


def like(server: Any, model: str) -> OpenAILike:
    return OpenAILike(
        model=model, api_base=server.base_url, api_key="x", is_chat_model=True, max_retries=0, timeout=5,
        context_window=8192,
    )  # fmt: skip


def scorer(query: str, answer: str) -> float:
    return 0.1  # every first answer is rejected: the last stage streams live


def budget() -> Budget:
    return Budget(MemoryLedger(), [Limit("overall", "10", period="day")])


def held_and_spent(b: Budget) -> tuple[Decimal, Decimal]:
    (status,) = b.status(Scope())
    return status.held_usd, status.spent_usd


def settings(**options: Any) -> dict[str, Any]:
    limits = {SMALL: 1000, BIG: 1000}
    return {"scorer": scorer, "thresholds": [0.5], "prices": PRICES, "max_output_tokens": limits, **options}


def lc(server: Any, **options: Any) -> FrugalChatModel:
    return FrugalChatModel(stages=[chat(server, SMALL), chat(server, BIG)], **settings(**options))


def li(server: Any, **options: Any) -> FrugalLLM:
    return FrugalLLM(stages=[like(server, SMALL), like(server, BIG)], **settings(**options))


def last_stage(trail: dict[str, Any]) -> tuple[int, int, bool, Decimal]:
    stage = trail["stages"][-1]
    return stage["input_tokens"], stage["output_tokens"], stage["usage_estimated"], Decimal(str(stage["cost_usd"]))


# ---------------------------------------------------------------------- usage asked for and reported


def test_langchain_stream_of_chatopenai_without_stream_usage_is_billed_exactly(server):
    llm = lc(server)
    chunks = list(llm.stream(QUESTION))
    assert "".join(str(c.content) for c in chunks) == LONG
    trail = chunks[-1].response_metadata["frugal"]
    assert last_stage(trail) == (12, 80, False, cost(BIG, 12, 80))
    assert Decimal(str(trail["cost_usd"])) == BILLED
    assert Decimal(llm.cost_tracker.summary()["total_cost_usd"]) == BILLED


async def test_langchain_astream_is_billed_exactly(server):
    llm = lc(server)
    chunks = [c async for c in llm.astream(QUESTION)]
    assert last_stage(chunks[-1].response_metadata["frugal"]) == (12, 80, False, cost(BIG, 12, 80))


def test_llamaindex_stream_chat_of_openailike_is_billed_exactly(server):
    llm = li(server)
    responses = list(llm.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    assert responses[-1].message.content == LONG
    trail = responses[-1].additional_kwargs["frugal"]
    assert last_stage(trail) == (12, 80, False, cost(BIG, 12, 80))
    assert Decimal(str(trail["cost_usd"])) == BILLED


async def test_llamaindex_astream_complete_is_billed_exactly(server):
    llm = li(server)
    responses = [r async for r in await llm.astream_complete(QUESTION)]
    assert last_stage(responses[-1].additional_kwargs["frugal"]) == (12, 80, False, cost(BIG, 12, 80))


# ---------------------------------------------------------------------- a provider that reports none


def test_a_child_that_never_reports_usage_is_estimated_and_flagged():
    answer = "Mary Ann Evans wrote it under a pen name."
    prices = {"GenericFakeChatModel": (2, 8)}
    expected_in = estimate_prompt_tokens([QUESTION], "GenericFakeChatModel")
    expected_out = estimate_tokens(answer, "GenericFakeChatModel")
    for streamed in (False, True):
        llm = FrugalChatModel(
            stages=[GenericFakeChatModel(messages=iter([answer]))], scorer=scorer, thresholds=[], prices=prices
        )
        if streamed:
            trail = list(llm.stream(QUESTION))[-1].response_metadata["frugal"]
        else:
            trail = llm.invoke(QUESTION).response_metadata["frugal"]
        expected = TokenPrice(2, 8).cost(expected_in, expected_out)
        assert last_stage(trail) == (expected_in, expected_out, True, expected) and expected > 0
        assert Decimal(llm.cost_tracker.summary()["total_cost_usd"]) == expected


# ---------------------------------------------------------------------- the caller stops reading


def partial_cost(model: str, text: str) -> Decimal:
    return cost(model, estimate_prompt_tokens([QUESTION], model), estimate_tokens(text, model))


def test_langchain_stream_closed_after_the_first_chunk_settles_what_was_produced(server):
    b = budget()
    llm = lc(server, budget=b)
    stream = llm.stream(QUESTION)
    first = next(stream)
    while not first.content:
        first = next(stream)
    stream.close()
    held, spent = held_and_spent(b)
    assert held == 0
    assert spent == cost(SMALL, 12, 3) + partial_cost(BIG, str(first.content)) > cost(SMALL, 12, 3)
    summary = llm.cost_tracker.summary()
    assert Decimal(summary["total_cost_usd"]) == spent and summary["calls"] == 1


async def test_langchain_astream_aclose_settles_what_was_produced(server):
    b = budget()
    llm = lc(server, budget=b)
    stream = llm.astream(QUESTION)
    text = ""
    async for chunk in stream:
        text += str(chunk.content)
        if text:
            break
    await stream.aclose()
    held, spent = held_and_spent(b)
    assert held == 0
    assert spent == cost(SMALL, 12, 3) + partial_cost(BIG, text)
    assert Decimal(llm.cost_tracker.summary()["total_cost_usd"]) == spent


async def test_a_cancelled_astream_task_settles_what_was_produced(server):
    b = budget()
    llm = lc(server, budget=b)
    got: list[str] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for chunk in llm.astream(QUESTION):
            got.append(str(chunk.content))
            if "".join(got):
                started.set()
                await asyncio.sleep(30)

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the generators are closed by the loop's finalizer, a few iterations later
        if held_and_spent(b)[0] == 0:
            break
        await asyncio.sleep(0.01)
    held, spent = held_and_spent(b)
    assert held == 0
    assert spent == cost(SMALL, 12, 3) + partial_cost(BIG, "".join(got))


def test_llamaindex_stream_chat_closed_early_settles_what_was_produced(server):
    b = budget()
    llm = li(server, budget=b)
    stream = llm.stream_chat([ChatMessage(role="user", content=QUESTION)])
    first = next(stream)
    while not first.delta:
        first = next(stream)
    stream.close()
    held, spent = held_and_spent(b)
    assert held == 0
    assert spent == cost(SMALL, 12, 3) + partial_cost(BIG, first.message.content or "")
    assert Decimal(llm.cost_tracker.summary()["total_cost_usd"]) == spent


async def test_llamaindex_astream_chat_aclose_settles_what_was_produced(server):
    b = budget()
    llm = li(server, budget=b, tenant="acme", user="ann")
    stream = await llm.astream_chat([ChatMessage(role="user", content=QUESTION)])
    text = ""
    async for response in stream:
        text = response.message.content or ""
        if text:
            break
    await stream.aclose()
    (status,) = b.status(Scope("acme", "ann"))
    assert status.held_usd == 0
    assert status.spent_usd == cost(SMALL, 12, 3) + partial_cost(BIG, text)
    trail_failures = llm.cost_tracker.summary()
    assert trail_failures["failed_calls"] == 1 and Decimal(trail_failures["total_cost_usd"]) == status.spent_usd


def test_a_stage_that_opts_out_of_stream_usage_is_estimated_and_flagged(server):
    llm = FrugalChatModel(stages=[chat(server, SMALL), chat(server, BIG, stream_usage=False)], **settings())
    chunks = list(llm.stream(QUESTION))
    expected = (estimate_prompt_tokens([QUESTION], BIG), estimate_tokens(LONG, BIG))
    assert last_stage(chunks[-1].response_metadata["frugal"]) == (*expected, True, cost(BIG, *expected))
    assert llm.cost_tracker.summary()["stage_calls_with_estimated_usage"] == 1
