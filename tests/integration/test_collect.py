"""``frugal collect`` through real ChatOpenAI clients against the replay server."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.collect import collect, collect_async, load_providers, load_queries
from shared_scorer.fitting.data import load_records
from shared_scorer.fitting.grading import normalized_containment
from shared_scorer.server.testing import make_record, replay_server

SMALL, BIG = "replay-small", "replay-big"
QUESTIONS = [(f"What is {i} + {i}?", str(2 * i)) for i in range(6)]
RECORDS = [
    make_record(q, f"It is {ref}." if i % 2 == 0 else "No idea.", model=SMALL, input_tokens=10, output_tokens=4)
    for i, (q, ref) in enumerate(QUESTIONS)
] + [make_record(q, f"The answer is {ref}", model=BIG, input_tokens=10, output_tokens=5) for q, ref in QUESTIONS]


@pytest.fixture
def server() -> Any:
    with replay_server(RECORDS, hang_seconds=2) as server:
        yield server


def write_inputs(tmp_path: Path, server: Any) -> tuple[Path, Path]:
    providers = [
        {
            "name": SMALL,
            "model": SMALL,
            "base_url": server.base_url,
            "price": {"input_per_mtok": 1, "output_per_mtok": 2},
            "kwargs": {"timeout": 5},
        },
        {
            "name": "big",
            "model": BIG,
            "class": "langchain_openai:ChatOpenAI",
            "kwargs": {"base_url": server.base_url, "api_key": "x", "max_retries": 0, "timeout": 5},
            "price": {"input_per_mtok": 10, "output_per_mtok": 20},
            "concurrency": 2,
        },
    ]
    (tmp_path / "providers.json").write_text(json.dumps(providers))
    with (tmp_path / "queries.jsonl").open("w") as handle:
        for q, ref in QUESTIONS:
            handle.write(json.dumps({"query": q, "reference": ref, "system": "Answer briefly."}) + "\n")
    return tmp_path / "providers.json", tmp_path / "queries.jsonl"


def test_collect_writes_the_recorded_schema_with_costs_and_grades(tmp_path: Path, server: Any) -> None:
    providers, queries = write_inputs(tmp_path, server)
    out = tmp_path / "recorded.jsonl"
    summary = collect(
        load_providers(providers), load_queries(queries), normalized_containment, out, progress=False, backoff=0.01
    )
    assert (summary["asked"], summary["failed"], summary["skipped_already_answered"]) == (12, 0, 0)
    rows = load_records(out)  # the recorded schema, validated field by field
    assert len(rows) == 12
    small = {r.query: r for r in rows if r.model == SMALL}
    assert [small[q].correct for q, _ in QUESTIONS] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert all(r.correct == 1.0 for r in rows if r.model == "big")
    assert small[QUESTIONS[0][0]].cost_usd == pytest.approx((10 * 1 + 4 * 2) / 1e6)
    assert all(r.system == "Answer briefly." and r.reference is not None for r in rows)
    # 6 x (10*1 + 4*2) + 6 x (10*10 + 5*20), USD per million tokens
    assert summary["spent_usd"] == Decimal(6 * 18 + 6 * 200) / Decimal(1_000_000)


def test_an_interrupted_run_resumes_without_paying_twice(tmp_path: Path, server: Any) -> None:
    providers_path, queries_path = write_inputs(tmp_path, server)
    providers, queries = load_providers(providers_path), load_queries(queries_path)
    out = tmp_path / "recorded.jsonl"
    graded = 0

    def metric(answer: str, reference: str) -> float:
        nonlocal graded
        graded += 1
        return normalized_containment(answer, reference)

    async def interrupted() -> None:
        task = asyncio.ensure_future(
            collect_async(providers, queries, metric, out, concurrency=1, progress=False, backoff=0.01)
        )
        while graded < 5:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    time.sleep(0.3)  # a request cancelled in flight may still reach the server's log
    first = {(r.query_id, r.model) for r in load_records(out)}
    assert 5 <= len(first) < 12
    sent_first = len(server.requests)
    # a crash in the middle of a write leaves half a line: it is dropped and asked again
    with out.open("a") as handle:
        handle.write('{"query_id": "q-cut')
    server.clear_requests()
    summary = collect(providers, queries, metric, out, progress=False, backoff=0.01)
    assert summary["skipped_already_answered"] == len(first)
    assert summary["asked"] == 12 - len(first)
    asked_again = {(r.model, r.query) for r in server.requests}
    by_id = {q.query_id: q.query for q in queries}
    names = {SMALL: SMALL, "big": BIG}
    assert not asked_again & {(names[m], by_id[qid]) for qid, m in first}  # nothing answered is paid twice
    # each missing pair asked once. The server's log may hold up to three more entries, none of them a pair
    # already answered: one transport retry on a connection the cancelled run left broken, and, on a loaded
    # machine, the cancelled run's in-flight requests (one per provider) arriving after the wait above.
    assert len(asked_again) == 12 - len(first) <= server.request_count() <= 15 - len(first)
    assert sent_first - len(first) <= 2  # at most the requests in flight at the interruption were lost
    assert len(load_records(out)) == 12


def test_retries_with_backoff_on_429(tmp_path: Path, server: Any) -> None:
    providers, queries = write_inputs(tmp_path, server)
    server.set_fault(BIG, "429", count=2)
    summary = collect(
        load_providers(providers),
        load_queries(queries)[:1],
        normalized_containment,
        tmp_path / "out.jsonl",
        progress=False,
        backoff=0.01,
        retries=3,
    )
    assert (summary["asked"], summary["failed"]) == (2, 0)
    assert server.request_count(BIG) == 3  # two 429s, then the answer
    server.set_fault(BIG, "500", count=None)
    summary = collect(
        load_providers(providers),
        load_queries(queries)[1:2],
        normalized_containment,
        tmp_path / "out.jsonl",
        progress=False,
        backoff=0.01,
        retries=1,
    )
    assert summary["failed"] == 1 and "big" in summary["failures"][0]


def test_bad_inputs_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"model": "m"}]))
    with pytest.raises(ConfigurationError, match=r"p.json: providers\[0\]: give exactly one of 'base_url'"):
        load_providers(path)
    path.write_text(json.dumps([{"model": "m", "base_url": "http://x", "price": {"input": 1}}]))
    with pytest.raises(ConfigurationError, match="field 'price'"):
        load_providers(path)
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "a", "reference": "b"}\n{"query": "c"}\n')
    with pytest.raises(DataError, match=r"q.jsonl:2: field 'reference'"):
        load_queries(queries)


def test_collect_sends_the_history_and_records_history_and_profile(tmp_path: Path, server: Any) -> None:
    providers, _ = write_inputs(tmp_path, server)
    queries = tmp_path / "with_context.jsonl"
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    row = {"query": QUESTIONS[0][0], "reference": "0", "history": history, "profile": {"tier": "gold"}}
    queries.write_text(json.dumps(row) + "\n")
    (loaded,) = load_queries(queries)
    assert loaded.history == (("user", "hi"), ("assistant", "hello")) and loaded.profile == "tier: gold"
    # a query with context gets its own id; one without keeps the id it always had
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"query": QUESTIONS[0][0], "reference": "0"}) + "\n")
    assert load_queries(plain)[0].query_id != loaded.query_id
    out = tmp_path / "recorded.jsonl"
    collect(load_providers(providers), [loaded], normalized_containment, out, progress=False, backoff=0.01)
    rows = load_records(out)
    assert sorted((r.model, r.profile, r.history) for r in rows) == [
        ("big", "tier: gold", ("user: hi", "assistant: hello")),
        (SMALL, "tier: gold", ("user: hi", "assistant: hello")),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "reference": "r", "history": ["hi"]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'history' must be a list of"):
        load_queries(bad)
