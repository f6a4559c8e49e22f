"""Stages ask their provider for token log-probabilities, and the scorer sees their sum: real ChatOpenAI and
OpenAILike clients against the replay server, whose rows carry a recorded ``logprob``."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer.scoring.base import FunctionScorer, ScoreRequest
from shared_scorer.server.testing import make_record, replay_server

SMALL, BIG = "replay-small", "replay-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
QUESTION = "Which letter? A or B"
LONG = "B, because the question says so and the other letter does not fit at all."  # four stream pieces
RECORDS = [
    make_record(QUESTION, "A", model=SMALL, input_tokens=9, output_tokens=1, logprob=-0.25),
    make_record(QUESTION, LONG, model=BIG, input_tokens=9, output_tokens=17, logprob=-1.5),
    make_record("No logprob here?", "Yes", model=SMALL, input_tokens=5, output_tokens=1),
    make_record("No logprob here?", "Yes indeed", model=BIG, input_tokens=5, output_tokens=2),
]


class Recording:
    """A scorer that records every ScoreRequest it rates and rejects every answer."""

    def __init__(self) -> None:
        self.seen: list[ScoreRequest] = []

    def __call__(self, request: ScoreRequest) -> float:
        self.seen.append(request)
        return 0.25

    def logprobs(self) -> list[tuple[str, float | None]]:
        return [(r.model, r.logprob) for r in self.seen]


@pytest.fixture
def server():
    with replay_server(RECORDS, hang_seconds=3) as server:
        yield server


def trail_logprobs(trail: dict[str, Any]) -> list[tuple[str, float | None]]:
    return [(s["model"], s["logprob"]) for s in trail["stages"]]


# ------------------------------------------------------------------ LangChain


def chat(server: Any, model: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=server.base_url, api_key="test", max_retries=0, timeout=5, **options)


def lc(server: Any, scorer: Recording, *, small: dict[str, Any] | None = None, **options: Any) -> FrugalChatModel:
    stages = [chat(server, SMALL, **(small or {})), chat(server, BIG)]
    return FrugalChatModel(stages=stages, scorer=FunctionScorer(scorer), thresholds=[0.7], prices=PRICES, **options)


def test_langchain_invoke_hands_each_stage_s_logprob_to_the_scorer(server):
    scorer = Recording()
    message = lc(server, scorer, return_policy="best").invoke(QUESTION)
    assert scorer.logprobs() == [(SMALL, -0.25), (BIG, -1.5)]
    assert trail_logprobs(message.response_metadata["frugal"]) == [(SMALL, -0.25), (BIG, -1.5)]


def test_langchain_stream_sums_the_live_stage_s_chunks(server):
    scorer = Recording()
    chunks = list(lc(server, scorer).stream(QUESTION))
    assert "".join(c.text for c in chunks) == LONG
    assert scorer.logprobs() == [(SMALL, -0.25)]
    assert trail_logprobs(chunks[-1].response_metadata["frugal"]) == [(SMALL, -0.25), (BIG, -1.5)]


async def test_langchain_astream_sums_the_live_stage_s_chunks(server):
    scorer = Recording()
    chunks = [chunk async for chunk in lc(server, scorer).astream(QUESTION)]
    assert "".join(c.text for c in chunks) == LONG
    assert scorer.logprobs() == [(SMALL, -0.25)]
    assert trail_logprobs(chunks[-1].response_metadata["frugal"]) == [(SMALL, -0.25), (BIG, -1.5)]


def test_langchain_logprob_is_none_without_a_recorded_value_or_when_turned_off(server):
    scorer = Recording()
    lc(server, scorer, return_policy="best").invoke("No logprob here?")
    lc(server, scorer, return_policy="best", request_logprobs=False).invoke(QUESTION)
    lc(server, scorer, return_policy="best", small={"logprobs": False}).invoke(QUESTION)  # the user's choice wins
    assert scorer.logprobs() == [(SMALL, None), (BIG, None), (SMALL, None), (BIG, None), (SMALL, None), (BIG, -1.5)]


def test_langchain_stages_are_asked_for_logprobs_on_copies(server):
    small = chat(server, SMALL)
    model = FrugalChatModel(
        stages=[small, chat(server, BIG)], scorer=lambda q, a: 0.25, thresholds=[0.7], prices=PRICES
    )
    assert small.logprobs is None  # the user's object is not changed
    assert [stage.logprobs for stage in model._callable_stages] == [True, True]
    off = FrugalChatModel(
        stages=[small, chat(server, BIG)],
        scorer=lambda q, a: 0.25,
        thresholds=[0.7],
        prices=PRICES,
        request_logprobs=False,
    )
    assert [stage.logprobs for stage in off._callable_stages] == [None, None]


def test_langchain_reasoning_stages_are_not_asked(server):
    stages = [chat(server, "o3-mini"), chat(server, "gpt-5-mini"), chat(server, BIG)]
    prices = {"o3-mini": (1, 4), "gpt-5-mini": (1, 2), BIG: (5, 15)}
    model = FrugalChatModel(stages=stages, scorer=lambda q, a: 0.25, thresholds=[0.7, 0.7], prices=prices)
    assert [stage.logprobs for stage in model._callable_stages] == [None, None, True]


# ------------------------------------------------------------------ LlamaIndex


def like(server: Any, model: str, **options: Any) -> OpenAILike:
    return OpenAILike(
        model=model,
        api_base=server.base_url,
        api_key="test",
        is_chat_model=True,
        context_window=8192,
        max_retries=0,
        timeout=5,
        **options,
    )


def li(server: Any, scorer: Recording, *, small: dict[str, Any] | None = None, **options: Any) -> FrugalLLM:
    stages = [like(server, SMALL, **(small or {})), like(server, BIG)]
    return FrugalLLM(stages=stages, scorer=FunctionScorer(scorer), thresholds=[0.7], prices=PRICES, **options)


def ask(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def test_llamaindex_chat_hands_each_stage_s_logprob_to_the_scorer(server):
    scorer = Recording()
    response = li(server, scorer, return_policy="best").chat(ask(QUESTION))
    assert scorer.logprobs() == [(SMALL, -0.25), (BIG, -1.5)]
    assert trail_logprobs(response.additional_kwargs["frugal"]) == [(SMALL, -0.25), (BIG, -1.5)]


async def test_llamaindex_achat_hands_each_stage_s_logprob_to_the_scorer(server):
    scorer = Recording()
    await li(server, scorer, return_policy="best").achat(ask(QUESTION))
    assert scorer.logprobs() == [(SMALL, -0.25), (BIG, -1.5)]


def test_llamaindex_stream_chat_sums_the_live_stage_s_chunks(server):
    scorer = Recording()
    responses = list(li(server, scorer).stream_chat(ask(QUESTION)))
    assert responses[-1].message.content == LONG
    assert scorer.logprobs() == [(SMALL, -0.25)]
    assert trail_logprobs(responses[-1].additional_kwargs["frugal"]) == [(SMALL, -0.25), (BIG, -1.5)]


async def test_llamaindex_astream_chat_sums_the_live_stage_s_chunks(server):
    scorer = Recording()
    responses = [r async for r in await li(server, scorer).astream_chat(ask(QUESTION))]
    assert responses[-1].message.content == LONG
    assert trail_logprobs(responses[-1].additional_kwargs["frugal"]) == [(SMALL, -0.25), (BIG, -1.5)]


def test_llamaindex_logprob_is_none_without_a_recorded_value_or_when_turned_off(server):
    scorer = Recording()
    li(server, scorer, return_policy="best").chat(ask("No logprob here?"))
    li(server, scorer, return_policy="best", request_logprobs=False).chat(ask(QUESTION))
    li(server, scorer, return_policy="best", small={"logprobs": False}).chat(ask(QUESTION))  # the user's choice wins
    assert scorer.logprobs() == [(SMALL, None), (BIG, None), (SMALL, None), (BIG, None), (SMALL, None), (BIG, -1.5)]


# ------------------------------------------------------------------ frugal collect


def test_collect_records_each_answer_s_logprob_and_reads_it_back(server, tmp_path):
    import json

    from shared_scorer.fitting.collect import collect, load_providers, load_queries
    from shared_scorer.fitting.data import load_records
    from shared_scorer.fitting.grading import normalized_containment

    providers = [
        {
            "name": SMALL,
            "model": SMALL,
            "base_url": server.base_url,
            "price": {"input_per_mtok": 1, "output_per_mtok": 2},
        },
        {
            "name": "big-no-logprobs",  # the user turned them off for this provider
            "model": BIG,
            "base_url": server.base_url,
            "price": {"input_per_mtok": 10, "output_per_mtok": 20},
            "kwargs": {"logprobs": False},
        },
    ]
    (tmp_path / "providers.json").write_text(json.dumps(providers))
    queries = [{"query": QUESTION, "reference": "B"}, {"query": "No logprob here?", "reference": "Yes"}]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    out = tmp_path / "recorded.jsonl"
    summary = collect(
        load_providers(tmp_path / "providers.json"),
        load_queries(tmp_path / "queries.jsonl"),
        normalized_containment,
        out,
        progress=False,
    )
    assert (summary["asked"], summary["failed"]) == (4, 0)
    rows = {(r.model, r.query): r for r in load_records(out)}
    assert {key: row.logprob for key, row in rows.items()} == {
        (SMALL, QUESTION): -0.25,
        (SMALL, "No logprob here?"): None,
        ("big-no-logprobs", QUESTION): None,
        ("big-no-logprobs", "No logprob here?"): None,
    }
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row.get("logprob", "absent") for row in raw if row["model"] == SMALL and row["query"] == QUESTION] == [
        -0.25
    ]
    assert all("logprob" not in row for row in raw if row["model"] != SMALL or row["query"] != QUESTION)
    # a rerun resumes from the file (its logprob rows parse) and asks nothing again
    again = collect(
        load_providers(tmp_path / "providers.json"),
        load_queries(tmp_path / "queries.jsonl"),
        normalized_containment,
        out,
        progress=False,
    )
    assert (again["asked"], again["skipped_already_answered"]) == (0, 4)
    assert load_records(out) == list(rows.values())
