"""A router-started strategy runs identically through FrugalChatModel, FrugalLLM and ``frugal serve`` (issue 13).

The strategy's first stage is gated (``small|prior>=0.5000``): a query whose predicted probability that
``small`` answers it correctly is below 0.5 starts at ``big``, and ``small`` is neither called nor billed.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from decimal import Decimal
from typing import Any

import openai
import pytest

from shared_scorer import TokenPrice
from shared_scorer.scoring.base import ScoreRequest
from shared_scorer.server.testing import make_record, replay_server, serving
from shared_scorer.strategy import Frontier, FrontierPoint, Strategy
from tests.integration.test_serve import require_serve

SMALL, BIG = "route-small", "route-big"
PRICES = {SMALL: ("1", "2"), BIG: ("10", "20")}
QUERIES = [f"What is {i} + {i}?" for i in range(12)]
RECORDS = [
    record
    for i, q in enumerate(QUERIES)
    for record in (
        make_record(q, f"maybe {2 * i + (i % 3 == 0)}", model=SMALL, input_tokens=10, output_tokens=4),
        make_record(q, f"it is {2 * i}", model=BIG, input_tokens=10, output_tokens=5),
    )
]


def _unit(text: str) -> float:
    return hashlib.sha256(text.encode()).digest()[0] / 255


class HashScorer:
    """Deterministic scores and router predictions: every path must hand it the same text."""

    def score(self, request: ScoreRequest) -> float:
        return _unit(f"{request.query}\x00{request.answer}")

    def score_batch(self, requests: list[ScoreRequest]) -> list[float]:
        return [self.score(r) for r in requests]

    def route(self, query: str) -> dict[str, float]:
        return {SMALL: _unit("route" + query), BIG: 1.0}


def strategy() -> Strategy:
    point = FrontierPoint((f"{SMALL}|prior>=0.5000", BIG), (0.5,), accuracy=0.9, cost=0.001, reach=(1.0, 0.5))
    return Strategy.from_frontier(Frontier([point]), scorer="scorer", data_fingerprint="r" * 64)


def comparable(trail: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(s["model"], s["status"], s["score"], s["cost_usd"]) for s in trail["stages"]]


def expected(query: str) -> list[tuple[Any, ...]]:
    """What the gate and the threshold decide for ``query``, computed by hand."""
    small = next(r for r in RECORDS if r.query == query and r.model == SMALL)
    big_cost = str(TokenPrice(*PRICES[BIG]).cost(10, 5))
    if _unit("route" + query) < 0.5:
        return [(SMALL, "routed_past", _unit("route" + query), "0"), (BIG, "accepted", None, big_cost)]
    small_cost = str(TokenPrice(*PRICES[SMALL]).cost(10, 4))
    score = _unit(f"{query}\x00{small.answer}")
    if score >= 0.5:
        return [(SMALL, "accepted", score, small_cost), (BIG, "not_called", None, "0")]
    return [(SMALL, "rejected", score, small_cost), (BIG, "accepted", None, big_cost)]


def test_a_router_started_strategy_decides_and_bills_identically_everywhere() -> None:
    require_serve("llamaindex")
    from langchain_openai import ChatOpenAI
    from llama_index.llms.openai_like import OpenAILike

    from frugal_langchain import FrugalChatModel
    from frugal_llamaindex import FrugalLLM
    from shared_scorer.server.gateway import make_app

    statuses = {expected(q)[0][1] for q in QUERIES}
    assert statuses == {"routed_past", "accepted", "rejected"}, "the sample must exercise every path"
    with replay_server(RECORDS) as replay:
        lc_stages = {m: ChatOpenAI(model=m, base_url=replay.base_url, api_key="x", max_retries=0, max_tokens=50)
                     for m in (SMALL, BIG)}  # fmt: skip
        li_stages = {m: OpenAILike(model=m, api_base=replay.base_url, api_key="x", is_chat_model=True, max_retries=0,
                                   max_tokens=50) for m in (SMALL, BIG)}  # fmt: skip
        chat = FrugalChatModel.from_strategy(strategy(), lc_stages, scorer=HashScorer(), prices=PRICES)
        llm = FrugalLLM.from_strategy(strategy(), li_stages, scorer=HashScorer(), prices=PRICES)
        assert chat.gates == llm.gates == [0.5, None]
        lc = [comparable(m.response_metadata["frugal"]) for m in chat.batch(QUERIES)]
        li = [comparable(llm.complete(q).additional_kwargs["frugal"]) for q in QUERIES]
        streamed = [comparable(_last_trail(chat.stream(q))) for q in QUERIES[:4]]
        served = {}
        for framework in ("langchain", "llamaindex"):
            module = importlib.import_module(f"frugal_{framework}.serve")
            backend = module.serve_backend(
                strategy(), base_url=replay.base_url, api_key="x", scorer=HashScorer(), prices=PRICES, max_tokens=50
            )
            with serving(make_app(backend, {"sk": {"tenant": "t"}})) as base_url:
                client = openai.OpenAI(base_url=base_url, api_key="sk", max_retries=0)
                served[framework] = [
                    comparable(
                        client.chat.completions.create(
                            model="frugal", messages=[{"role": "user", "content": q}]
                        ).model_extra["frugal"]
                    )
                    for q in QUERIES
                ]
                served[framework + " stream"] = [
                    comparable(
                        list(
                            client.chat.completions.create(
                                model="frugal", messages=[{"role": "user", "content": q}], stream=True
                            )
                        )[-1].model_extra["frugal"]
                    )
                    for q in QUERIES[:4]
                ]
        # the async and streamed paths of both adapters, on models of their own (the counts below are chat's)
        chat2 = FrugalChatModel.from_strategy(strategy(), lc_stages, scorer=HashScorer(), prices=PRICES)
        llm2 = FrugalLLM.from_strategy(strategy(), li_stages, scorer=HashScorer(), prices=PRICES)
        other = asyncio.run(_async_trails(chat2, llm2, QUERIES[:4]))
        other["llamaindex stream"] = [
            comparable(list(llm2.stream_complete(q))[-1].additional_kwargs["frugal"]) for q in QUERIES[:4]
        ]
    want = [expected(q) for q in QUERIES]
    for path, trails in {**other, **{k: v for k, v in served.items() if k.endswith("stream")}}.items():
        assert trails == want[:4], path
    assert lc == li == served["langchain"] == served["llamaindex"] == want
    assert streamed == want[:4]
    routed = sum(1 for w in want + want[:4] if w[0][1] == "routed_past")  # batch, then the four streams
    assert chat.cost_tracker.summary()["calls"] == len(QUERIES) + 4
    small = chat.cost_tracker.summary()["by_model"][SMALL]
    assert small["calls"] == len(QUERIES) + 4 - routed
    assert Decimal(small["cost_usd"]) == small["calls"] * TokenPrice(*PRICES[SMALL]).cost(10, 4)


async def _async_trails(chat: Any, llm: Any, queries: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"langchain ainvoke": [], "langchain astream": [], "llamaindex acomplete": []}
    out["llamaindex astream"] = []
    for q in queries:
        out["langchain ainvoke"].append(comparable((await chat.ainvoke(q)).response_metadata["frugal"]))
        trail = None
        async for chunk in chat.astream(q):
            trail = chunk.response_metadata.get("frugal") or trail
        out["langchain astream"].append(comparable(trail))
        out["llamaindex acomplete"].append(comparable((await llm.acomplete(q)).additional_kwargs["frugal"]))
        last = None
        async for part in await llm.astream_complete(q):
            last = part
        out["llamaindex astream"].append(comparable(last.additional_kwargs["frugal"]))
    return out


def _last_trail(chunks: Any) -> dict[str, Any]:
    trail = None
    for chunk in chunks:
        trail = chunk.response_metadata.get("frugal") or trail
    assert trail is not None
    return trail


@pytest.mark.parametrize("gates", [[0.5], [0.5, None, None], ["high", None]])
def test_gates_must_match_the_stages(gates: list[Any]) -> None:
    from frugal_langchain import FrugalChatModel
    from shared_scorer.errors import ConfigurationError
    from tests.fakes import EchoChatModel

    stages = [EchoChatModel(model_name="a"), EchoChatModel(model_name="b")]
    with pytest.raises((ConfigurationError, ValueError)):
        FrugalChatModel(
            stages=stages, scorer=HashScorer(), thresholds=[0.5], gates=gates, prices={"a": (1, 1), "b": (1, 1)}
        )
