"""One cascade, two frameworks: FrugalChatModel and FrugalLLM make identical decisions and costs."""

from __future__ import annotations

import hashlib
import json

import pytest
from langchain_openai import ChatOpenAI
from llama_index.llms.openai_like import OpenAILike

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer.fitting.data import load_records
from shared_scorer.server.testing import replay_server

CHAIN = ["MiniMax-M2.5", "gemini-3-flash-preview", "gemini-3.1-pro-preview"]


def scorer(query: str, answer: str) -> float:
    """A fixed pseudo-random score of the pair: both adapters must hand the scorer the same text."""
    digest = hashlib.sha256(f"{query}\x00{answer}".encode()).digest()
    return digest[0] / 255


def comparable(trail: dict) -> dict:
    """The trail without timings; an error's wording is each client's own, so keep only that it failed."""
    return {
        **{k: v for k, v in trail.items() if k != "latency_ms"},
        "stages": [
            {**{k: v for k, v in s.items() if k != "latency_ms"}, "error": s["error"] is not None}
            for s in trail["stages"]
        ],
    }


@pytest.mark.parametrize("faulty", [None, "gemini-3-flash-preview"])
def test_both_adapters_replay_120_queries_identically(datasets, faulty):
    root = datasets / "recorded"
    prices = {
        m: (str(p["input_per_mtok"]), str(p["output_per_mtok"]))
        for m, p in json.loads((root / "prices.json").read_text()).items()
    }
    records = [r for r in load_records(root / "simpleqa" / "test.jsonl") if r.model in CHAIN]
    complete = {r.query_id for r in records if r.model == CHAIN[0]}
    for model in CHAIN[1:]:
        complete &= {r.query_id for r in records if r.model == model}
    queries = [r.query for r in records if r.model == CHAIN[0] and r.query_id in complete][:120]
    assert len(queries) == 120
    with replay_server(records) as server:
        if faulty:
            server.set_fault(faulty, "500")
        chat_model = FrugalChatModel(
            stages=[ChatOpenAI(model=m, base_url=server.base_url, api_key="t", max_retries=0) for m in CHAIN],
            scorer=scorer,
            thresholds=[0.6, 0.4],
            prices=prices,
        )
        llm = FrugalLLM(
            stages=[
                OpenAILike(model=m, api_base=server.base_url, api_key="t", is_chat_model=True, max_retries=0)
                for m in CHAIN
            ],
            scorer=scorer,
            thresholds=[0.6, 0.4],
            prices=prices,
        )
        lc = [
            comparable(m.response_metadata["frugal"]) for m in chat_model.batch(queries, config={"max_concurrency": 4})
        ]
        li = [comparable(llm.complete(q).additional_kwargs["frugal"]) for q in queries]
    assert lc == li
    answered = {t["stage"] for t in lc}
    assert answered == ({0, 2} if faulty else {0, 1, 2}), "the sample must exercise every path"
    assert chat_model.cost_tracker.summary() == llm.cost_tracker.summary()
