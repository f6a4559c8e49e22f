"""Log-probabilities: the recorded schema's optional ``logprob``, the replay server's OpenAI ``logprobs``
payload, and the core's sum of token log-probabilities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shared_scorer.errors import DataError
from shared_scorer.fitting.data import load_records, parse_record
from shared_scorer.outcome import Attempt, StageOutput, asks_logprobs, sum_logprobs
from shared_scorer.scoring.base import ScoreRequest
from shared_scorer.server.replay import recorded_reply
from shared_scorer.server.testing import make_record
from shared_scorer.server.wire import completion_body, stream_chunks

ROW = {
    "query_id": "q1",
    "query": "Capital of France?",
    "model": "m",
    "answer": "Paris",
    "correct": 1.0,
    "cost_usd": 0.001,
    "reference": "Paris",
}


# ------------------------------------------------------------------ recorded schema


def test_record_reads_the_optional_logprob():
    assert parse_record({**ROW, "logprob": -0.25}, "f:1").logprob == -0.25
    assert parse_record({**ROW, "logprob": 0}, "f:1").logprob == 0.0
    assert parse_record({**ROW, "logprob": None}, "f:1").logprob is None
    assert parse_record(ROW, "f:1").logprob is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.5, "must be <= 0"),
        (1e-9, "must be <= 0"),
        ("-0.2", "must be a finite number <= 0 or absent"),
        (True, "must be a finite number <= 0 or absent"),
        (float("nan"), "must be a finite number <= 0 or absent"),
        (float("-inf"), "must be a finite number <= 0 or absent"),
    ],
)
def test_a_bad_logprob_is_a_data_error_naming_file_and_line(tmp_path: Path, value: object, message: str):
    path = tmp_path / "rows.jsonl"
    good = json.dumps({**ROW, "logprob": -0.1})
    bad = json.dumps({**ROW, "query_id": "q2", "logprob": value})
    path.write_text(good + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_records(path)
    assert f"{path}:2" in str(caught.value)
    assert "'logprob'" in str(caught.value) and message in str(caught.value)


def test_make_record_takes_a_logprob():
    assert make_record("q", "a", logprob=-0.5).logprob == -0.5
    assert make_record("q", "a").logprob is None


# ------------------------------------------------------------------ the core


def test_sum_logprobs_of_openai_token_entries_and_objects():
    class Token:
        def __init__(self, logprob: float) -> None:
            self.logprob = logprob

    assert sum_logprobs([{"token": "A", "logprob": -0.25}, {"token": "", "logprob": 0.0}]) == -0.25
    assert sum_logprobs([Token(-0.5), Token(-0.25)]) == -0.75
    assert sum_logprobs({"content": [{"logprob": -1.5}]}) == -1.5
    for nothing in (
        None,
        [],
        {"content": None},
        {"content": []},
        [{"token": "A"}],
        [{"logprob": "x"}],
        [{"logprob": 0.5}],
        [{"logprob": float("nan")}],
    ):
        assert sum_logprobs(nothing) is None


@pytest.mark.parametrize(
    ("model", "asked"),
    [
        ("gpt-4o-mini", True),
        ("qwen2.5-72b-instruct", True),
        ("accounts/fireworks/models/llama-v3p1-8b-instruct", True),
        ("gpt-5-chat-latest", True),
        ("o1", False),
        ("o3-mini", False),
        ("o4-mini-2025-04-16", False),
        ("openai/o3", False),
        ("gpt-5-mini", False),
        ("GPT-5.2", False),
    ],
)
def test_reasoning_models_that_reject_logprobs_are_not_asked(model: str, asked: bool):
    assert asks_logprobs(model) is asked


def test_stage_output_and_score_request_carry_the_logprob():
    assert StageOutput("A").logprob is None
    assert StageOutput("A", 3, 1, logprob=-0.25).logprob == -0.25
    request = ScoreRequest("q", "A", "m", 0, (), 1, logprob=-0.25)
    assert request.logprob == -0.25 and ScoreRequest("q", "A").logprob is None
    assert Attempt(0, "m", logprob=-0.25).as_dict()["logprob"] == -0.25
    assert Attempt(0, "m").as_dict()["logprob"] is None


# ------------------------------------------------------------------ the wire payload

COMMON = {"completion_id": "chatcmpl-1", "model": "m", "created": 0, "call_ids": []}


def tokens_of(body: dict) -> list[dict]:
    return body["choices"][0]["logprobs"]["content"]


def streamed_logprobs(chunks: list[dict]) -> list[float]:
    choices = [c["choices"][0] for c in chunks]
    return [t["logprob"] for choice in choices if choice["logprobs"] for t in choice["logprobs"]["content"]]


def test_a_one_token_answer_gets_the_whole_logprob():
    reply = recorded_reply(make_record("q", "B", logprob=-0.25), None, logprobs=True)
    body = completion_body(reply, **COMMON)
    assert tokens_of(body) == [{"token": "B", "logprob": -0.25, "bytes": [66], "top_logprobs": []}]


def test_a_long_answer_puts_the_logprob_on_its_first_token():
    answer = "The answer is 42 because six times seven is forty-two."
    reply = recorded_reply(make_record("q", answer, logprob=-1.75), None, logprobs=True, top_logprobs=2)
    content = tokens_of(completion_body(reply, **COMMON))
    assert "".join(t["token"] for t in content) == answer
    assert [t["logprob"] for t in content] == [-1.75, 0.0, 0.0]
    assert math.fsum(t["logprob"] for t in content) == -1.75
    assert all(bytes(t["bytes"]).decode() == t["token"] for t in content)
    # top_logprobs: the chosen token, the one alternative the server knows
    assert content[0]["top_logprobs"] == [
        {"token": content[0]["token"], "logprob": -1.75, "bytes": content[0]["bytes"]}
    ]


def test_streamed_chunks_carry_each_piece_s_tokens():
    answer = "The answer is 42 because six times seven is forty-two."
    reply = recorded_reply(make_record("q", answer, logprob=-1.75), None, logprobs=True)
    chunks = list(stream_chunks(reply, include_usage=False, **COMMON))
    pieces = [c["choices"][0] for c in chunks if c["choices"][0]["delta"].get("content")]
    for piece in pieces:
        assert "".join(t["token"] for t in piece["logprobs"]["content"]) == piece["delta"]["content"]
    streamed = streamed_logprobs(chunks)
    assert streamed == [-1.75, 0.0, 0.0]


def test_no_logprobs_unless_asked_for_and_recorded():
    asked_no_value = recorded_reply(make_record("q", "B"), None, logprobs=True)
    not_asked = recorded_reply(make_record("q", "B", logprob=-0.25), None)
    for reply in (asked_no_value, not_asked):
        assert completion_body(reply, **COMMON)["choices"][0]["logprobs"] is None
        assert all(c["choices"][0]["logprobs"] is None for c in stream_chunks(reply, include_usage=False, **COMMON))


def test_a_truncated_reply_has_no_logprobs():
    record = make_record("q", "B", logprob=-0.25, input_tokens=3, output_tokens=50)
    reply = recorded_reply(record, 10, logprobs=True)
    assert reply.truncated and completion_body(reply, **COMMON)["choices"][0]["logprobs"] is None


def test_an_empty_answer_carries_its_logprob_on_one_empty_token():
    reply = recorded_reply(make_record("q", "", logprob=-3.0), None, logprobs=True)
    assert tokens_of(completion_body(reply, **COMMON)) == [
        {"token": "", "logprob": -3.0, "bytes": [], "top_logprobs": []}
    ]
    chunks = list(stream_chunks(reply, include_usage=False, **COMMON))
    streamed = streamed_logprobs(chunks)
    assert streamed == [-3.0]


# ------------------------------------------------------------------ over HTTP, through the openai client


def test_the_replay_server_answers_logprobs_when_asked():
    import openai

    from shared_scorer.server.testing import replay_server

    records = [make_record("Pick one: A or B?", "B", logprob=-0.25), make_record("No value?", "A")]
    with replay_server(records) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=5)
        ask = {"model": "replay-model", "messages": [{"role": "user", "content": "Pick one: A or B?"}]}
        reply = client.chat.completions.create(**ask, logprobs=True)
        assert reply.choices[0].logprobs is not None
        assert [(t.token, t.logprob, t.bytes) for t in reply.choices[0].logprobs.content] == [("B", -0.25, [66])]
        assert client.chat.completions.create(**ask).choices[0].logprobs is None
        streamed = [
            t.logprob
            for chunk in client.chat.completions.create(**ask, logprobs=True, stream=True)
            if chunk.choices and chunk.choices[0].logprobs
            for t in chunk.choices[0].logprobs.content or []
        ]
        assert streamed == [-0.25]
        other = {"model": "replay-model", "messages": [{"role": "user", "content": "No value?"}]}
        assert client.chat.completions.create(**other, logprobs=True).choices[0].logprobs is None
