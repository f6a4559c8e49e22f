"""The replay server, driven by the real ``openai`` SDK and LangChain's ``ChatOpenAI``."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from shared_scorer.cli.replay import add_parsers, serve_forever_cli
from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.data import Record, iter_records
from shared_scorer.server.replay import ReplayServer
from shared_scorer.server.testing import make_record, replay_server

ROOT = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("FRUGAL_DATASETS", ROOT.parent / "shared" / "datasets"))

SMALL, BIG = "small-model", "big-model"
QUESTION = "What is the capital of Australia?"
ANSWER = "The capital of Australia is Canberra, chosen as a compromise between Sydney and Melbourne."
RECORDS = [
    Record("q1", QUESTION, SMALL, ANSWER, correct=1.0, cost_usd=0.001, input_tokens=14, output_tokens=19),
    Record("q1", QUESTION, BIG, "Canberra.", correct=1.0, cost_usd=0.02, input_tokens=15, output_tokens=3),
    Record("q2", "  Padded question?\n", SMALL, "Padded answer.", correct=0.0, cost_usd=0.0),
]
WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
BROKEN_ARGS = '{"query": "unterminated'
SCENARIOS: list[dict[str, Any]] = [  # checked in order, before the records
    {"model": SMALL, "match": "weather", "tool_calls": [{"name": "get_weather", "arguments": WEATHER_ARGS}]},
    {"model": "*", "match": "weather", "after_tool": True, "content": "It is 21 degrees in Paris."},
    {"model": SMALL, "match": "broken tool", "tool_calls": [{"name": "search", "arguments": BROKEN_ARGS}]},
]
SCENARIOS[0]["usage"] = {"prompt_tokens": 40, "completion_tokens": 12}
SCENARIOS[1]["usage"] = {"prompt_tokens": 60, "completion_tokens": 8}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with replay_server(RECORDS, SCENARIOS, hang_seconds=1.0) as running:
        yield running


def sdk(server: ReplayServer, timeout: float = 2.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=timeout)


def chat(server: ReplayServer, model: str = SMALL, timeout: float = 2.0, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key="x", model=model, max_retries=0, timeout=timeout, **options)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def ask_sdk(server: ReplayServer, stream: bool) -> None:
    """One request of QUESTION to SMALL with the openai SDK, reading a stream to its end."""
    if stream:
        list(sdk(server).chat.completions.create(model=SMALL, messages=user(QUESTION), stream=True))
    else:
        sdk(server).chat.completions.create(model=SMALL, messages=user(QUESTION))


def ask_chat_openai(server: ReplayServer, stream: bool) -> None:
    if stream:
        list(chat(server).stream(QUESTION))
    else:
        chat(server).invoke(QUESTION)


def gather(chunks: Iterator[BaseMessage]) -> AIMessageChunk:
    total: AIMessageChunk | None = None
    for chunk in chunks:
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    return total


# ------------------------------------------------------------------------------------ recorded answers


def test_recorded_answer_with_exact_usage(server: ReplayServer) -> None:
    completion = sdk(server).chat.completions.create(model=SMALL, messages=user(QUESTION))
    assert completion.id == "chatcmpl-replay-1"
    assert completion.object == "chat.completion"
    assert completion.model == SMALL
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].message.tool_calls is None
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (14, 19)
    assert completion.usage.total_tokens == 33
    assert server.requests == [(SMALL, QUESTION, None)]


def test_chat_openai_reads_answer_and_usage_of_the_requested_model(server: ReplayServer) -> None:
    message = chat(server, BIG).invoke(QUESTION)
    assert isinstance(message, AIMessage)
    assert message.content == "Canberra."
    assert message.usage_metadata is not None
    assert message.usage_metadata == {
        **message.usage_metadata,
        "input_tokens": 15,
        "output_tokens": 3,
        "total_tokens": 18,
    }
    assert message.response_metadata["finish_reason"] == "stop"
    assert (server.request_count(BIG), server.request_count(SMALL)) == (1, 0)


def test_query_matching_uses_last_user_message_stripping_and_text_parts(server: ReplayServer) -> None:
    client = sdk(server)
    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": " of Australia?"}]
    conversation: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Padded question?"},
        {"role": "assistant", "content": "Padded answer."},
        {"role": "user", "content": parts},
    ]
    completion = client.chat.completions.create(model=SMALL, messages=conversation)
    assert completion.choices[0].message.content == ANSWER
    padded = client.chat.completions.create(model=SMALL, messages=user("Padded question?"))
    assert padded.choices[0].message.content == "Padded answer."
    assert padded.usage is None  # the record has no token counts
    assert [r.query for r in server.requests] == [QUESTION, "Padded question?"]


def test_stream_chunks_follow_openai_format(server: ReplayServer) -> None:
    stream = sdk(server).chat.completions.create(
        model=SMALL, messages=user(QUESTION), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.id for c in chunks} == {"chatcmpl-replay-1"}
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert texts == [ANSWER[i : i + 20] for i in range(0, len(ANSWER), 20)]
    assert len(texts) == 5
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    usage = chunks[-1].usage.model_dump(exclude_none=True)
    assert usage == {"prompt_tokens": 14, "completion_tokens": 19, "total_tokens": 33}


def test_chat_openai_stream_reassembles_answer_and_usage(server: ReplayServer) -> None:
    total = gather(chat(server, stream_usage=True).stream(QUESTION))
    assert total.content == ANSWER
    assert total.usage_metadata is not None
    assert (total.usage_metadata["input_tokens"], total.usage_metadata["output_tokens"]) == (14, 19)
    assert total.usage_metadata["total_tokens"] == 33
    assert total.response_metadata["finish_reason"] == "stop"


async def test_async_chat_openai_stream(server: ReplayServer) -> None:
    llm = chat(server, BIG, stream_usage=True)
    total: AIMessageChunk | None = None
    async for chunk in llm.astream(QUESTION):
        total = chunk if total is None else total + chunk
    assert total is not None
    assert total.content == "Canberra."
    assert total.usage_metadata is not None
    assert total.usage_metadata["total_tokens"] == 18
    message = await llm.ainvoke(QUESTION)
    assert message.content == "Canberra."


# ---------------------------------------------------------------------------------------- tool calls


def test_tool_call_scenario_with_openai_sdk(server: ReplayServer) -> None:
    completion = sdk(server).chat.completions.create(
        model=SMALL, messages=user("What is the weather in Paris?"), tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    function = {"name": "get_weather", "arguments": json.dumps(WEATHER_ARGS)}
    assert [c.model_dump() for c in choice.message.tool_calls] == [
        {"id": "call_1", "type": "function", "function": function}
    ]
    assert completion.usage is not None
    assert completion.usage.total_tokens == 52


def test_agent_round_trip_with_chat_openai(server: ReplayServer) -> None:
    llm = chat(server).bind_tools([WEATHER_TOOL])
    question = HumanMessage("What is the weather in Paris?")
    first = llm.invoke([question])
    assert isinstance(first, AIMessage)
    assert first.tool_calls == [{"name": "get_weather", "args": WEATHER_ARGS, "id": "call_1", "type": "tool_call"}]
    assert first.response_metadata["finish_reason"] == "tool_calls"
    result = ToolMessage(content="21 degrees", tool_call_id="call_1")
    final = llm.invoke([question, first, result])
    assert final.content == "It is 21 degrees in Paris."
    assert isinstance(final, AIMessage)
    assert final.usage_metadata is not None
    assert final.usage_metadata["total_tokens"] == 68


def test_unparseable_tool_arguments_are_sent_verbatim(server: ReplayServer) -> None:
    message = chat(server).invoke("a broken tool call please")
    assert isinstance(message, AIMessage)
    assert message.tool_calls == []
    assert [(c["name"], c["args"], c["id"]) for c in message.invalid_tool_calls] == [("search", BROKEN_ARGS, "call_1")]
    stream = sdk(server).chat.completions.create(model=SMALL, messages=user("broken tool"), stream=True)
    pieces = [
        call.function.arguments
        for chunk in stream
        for call in (chunk.choices[0].delta.tool_calls or [])
        if call.function is not None and call.function.arguments
    ]
    assert "".join(pieces) == BROKEN_ARGS
    assert len(pieces) == 2


def test_streamed_tool_call_with_chat_openai(server: ReplayServer) -> None:
    total = gather(chat(server, stream_usage=True).stream("What is the weather in Paris?"))
    assert total.tool_calls == [{"name": "get_weather", "args": WEATHER_ARGS, "id": "call_1", "type": "tool_call"}]
    assert [c["args"] for c in total.tool_call_chunks] == [json.dumps(WEATHER_ARGS)]
    assert total.response_metadata["finish_reason"] == "tool_calls"
    assert total.usage_metadata is not None
    assert (total.usage_metadata["input_tokens"], total.usage_metadata["output_tokens"]) == (40, 12)


# -------------------------------------------------------------------------------------------- faults

STATUS_FAULTS = [("429", openai.RateLimitError, 429), ("500", openai.InternalServerError, 500)]


@pytest.mark.parametrize(("kind", "error", "status"), STATUS_FAULTS)
@pytest.mark.parametrize("stream", [False, True])
def test_status_faults(
    server: ReplayServer, kind: str, error: type[openai.APIStatusError], status: int, stream: bool
) -> None:
    server.set_fault(SMALL, kind)
    with pytest.raises(error) as raised:
        ask_sdk(server, stream)
    assert type(raised.value) is error
    assert raised.value.status_code == status
    with pytest.raises(error) as wrapped:  # langchain-openai re-raises subclasses of the SDK's errors
        ask_chat_openai(server, stream)
    assert wrapped.value.status_code == status
    if kind == "429":
        assert raised.value.response.headers["retry-after"] == "0"
        assert raised.value.code == "rate_limit_exceeded"
    assert server.requests == [(SMALL, QUESTION, kind)] * 2


def test_hang_times_out_client(server: ReplayServer) -> None:
    server.set_fault(SMALL, "hang")
    with pytest.raises(openai.APITimeoutError):
        sdk(server, timeout=0.2).chat.completions.create(model=SMALL, messages=user(QUESTION))
    with pytest.raises(openai.APITimeoutError):
        chat(server, timeout=0.2).invoke(QUESTION)
    assert [r.fault for r in server.requests] == ["hang", "hang"]


def test_hang_answers_late_without_blocking_other_requests(server: ReplayServer) -> None:
    server.set_fault(BIG, "hang", count=1)
    results: list[str | None] = []
    slow = threading.Thread(target=lambda: results.append(chat(server, BIG).invoke(QUESTION).text))
    started = time.monotonic()
    slow.start()
    while server.request_count(BIG) == 0:
        time.sleep(0.01)
    assert chat(server).invoke(QUESTION).content == ANSWER
    assert results == []  # answered while the other request still hangs
    slow.join(timeout=3)
    assert results == ["Canberra."]
    assert time.monotonic() - started >= 1.0


def test_stop_releases_a_hanging_request() -> None:
    errors: list[Exception] = []

    def call(running: ReplayServer) -> None:
        try:
            sdk(running, timeout=5).chat.completions.create(model=SMALL, messages=user(QUESTION))
        except Exception as exc:
            errors.append(exc)

    with replay_server(RECORDS, hang_seconds=30) as running:
        running.set_fault("*", "hang")
        caller = threading.Thread(target=call, args=(running,))
        caller.start()
        while running.request_count() == 0:
            time.sleep(0.01)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    caller.join(timeout=2)
    assert [(type(e), getattr(e, "status_code", None)) for e in errors] == [(openai.InternalServerError, 503)]


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_body_raises_json_decode_error(server: ReplayServer, stream: bool) -> None:
    server.set_fault(SMALL, "malformed")
    with pytest.raises(json.JSONDecodeError):
        ask_sdk(server, stream)
    with pytest.raises(json.JSONDecodeError):
        ask_chat_openai(server, stream)
    response = httpx.post(f"{server.base_url}/chat/completions", json={"model": SMALL, "messages": user("x")})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == '{"id": "chatcmpl-replay-malformed", "choices": ['


def test_garbage_body_has_no_choices(server: ReplayServer) -> None:
    server.set_fault(SMALL, "garbage")
    completion = sdk(server).chat.completions.create(model=SMALL, messages=user(QUESTION))
    assert completion.choices is None  # the SDK does not validate; the caller finds nothing
    with pytest.raises(TypeError, match="null value for 'choices'"):
        chat(server).invoke(QUESTION)
    streamed = gather(chat(server).stream(QUESTION))  # a stream without choices is just empty
    assert streamed.content == ""
    assert [r.fault for r in server.requests] == ["garbage"] * 3


def test_count_limited_fault_then_success(server: ReplayServer) -> None:
    server.set_fault(SMALL, "500", count=2)
    assert server.faults == {SMALL: ("500", 2)}
    llm = chat(server)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            llm.invoke(QUESTION)
    assert server.faults == {}
    assert llm.invoke(QUESTION).content == ANSWER
    assert [r.fault for r in server.requests] == ["500", "500", None]
    with pytest.raises(ConfigurationError, match="unknown fault kind 'teapot'"):
        server.set_fault(SMALL, "teapot")
    with pytest.raises(ConfigurationError, match="positive integer"):
        server.set_fault(SMALL, "500", count=0)


def test_admin_endpoint_sets_and_clears_faults(server: ReplayServer) -> None:
    admin = f"{server.url}/admin/faults"
    response = httpx.post(admin, json={"model": BIG, "kind": "429", "count": 1})
    assert response.status_code == 200
    assert response.json() == {"faults": {BIG: {"kind": "429", "count": 1}}}
    with pytest.raises(openai.RateLimitError):
        chat(server, BIG).invoke(QUESTION)
    assert chat(server, BIG).invoke(QUESTION).content == "Canberra."
    assert httpx.post(admin, json={"model": SMALL, "kind": 500, "count": None}).json() == {
        "faults": {SMALL: {"kind": "500", "count": None}}
    }
    assert httpx.get(admin).json() == {"faults": {SMALL: {"kind": "500", "count": None}}}
    assert httpx.delete(admin).json() == {"faults": {}}
    bad = httpx.post(admin, json={"model": SMALL, "kind": "slow"})
    assert bad.status_code == 400
    assert "unknown fault kind 'slow'" in bad.json()["error"]["message"]
    log = httpx.get(f"{server.url}/admin/requests").json()["requests"]
    assert log == [
        {"model": BIG, "query": QUESTION, "fault": "429"},
        {"model": BIG, "query": QUESTION, "fault": None},
    ]


# ------------------------------------------------------------------------------------- errors, routes


def test_unknown_model_is_404_naming_known_models(server: ReplayServer) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(server).chat.completions.create(model="gpt-nope", messages=user(QUESTION))
    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert raised.value.type == "invalid_request_error"
    assert raised.value.message == (
        "Error code: 404 - {'error': {'message': 'The model `gpt-nope` does not exist on this replay "
        "server. Known models: small-model, big-model.', 'type': 'invalid_request_error', 'param': None, "
        "'code': 'model_not_found'}}"
    )


def test_unknown_query_is_404_naming_model_and_query(server: ReplayServer) -> None:
    query = "Which " + "very " * 30 + "long question is this?"
    response = httpx.post(f"{server.base_url}/chat/completions", json={"model": BIG, "messages": user(query)})
    assert response.status_code == 404
    error = response.json()["error"]  # the hint's fields: tests/unit/test_replay_not_found.py
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "query_not_found")
    assert error["message"].startswith(f'No recorded answer of model `big-model` for the prompt "{query[:200]}"')
    with pytest.raises(openai.NotFoundError, match='for the prompt "Which very'):
        chat(server, BIG).invoke(query)


def test_models_health_and_bad_requests(server: ReplayServer) -> None:
    assert [m.id for m in sdk(server).models.list()] == [SMALL, BIG]
    assert httpx.get(f"{server.url}/health").status_code == 200
    not_json = httpx.post(f"{server.base_url}/chat/completions", content=b"{nope")
    assert not_json.status_code == 400
    assert httpx.post(f"{server.base_url}/chat/completions", json={"model": SMALL}).status_code == 400
    assert httpx.get(f"{server.url}/elsewhere").status_code == 404


# ---------------------------------------------------------------------------- files, CLI, real data


def test_from_files_with_scenarios_and_cli_parser(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    row = {"query_id": "a", "query": "Hi?", "model": "m", "answer": "Hello.", "correct": 1.0, "cost_usd": 0.0}
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [{"model": "m", "match": "tool", "content": "ok"}]}))
    parser = argparse.ArgumentParser(prog="frugal")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["replay-server", "--data", str(data), "--scenarios", str(scenarios), "--port", "0"])
    assert args.run is serve_forever_cli  # the one dispatch convention: set_defaults(run=...)
    ready, stop = threading.Event(), threading.Event()
    codes: list[int] = []
    serving = threading.Thread(target=lambda: codes.append(serve_forever_cli(args, ready=ready, stop=stop)))
    serving.start()
    try:
        assert ready.wait(5)
        with ReplayServer.from_files(data, scenarios_path=scenarios) as direct:
            llm = chat(direct, "m")
            assert (llm.invoke("Hi?").content, llm.invoke("use a tool").content) == ("Hello.", "ok")
    finally:
        stop.set()
        serving.join(timeout=5)
    assert codes == [0]


def test_module_entry_point_serves_until_interrupted(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    row = {"query_id": "a", "query": "Hi?", "model": "m", "answer": "Hello.", "correct": 1.0, "cost_usd": 0.0}
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "shared_scorer.server", "--data", str(data), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as when started in the background of a script: SIGINT inherited ignored; Ctrl-C must still stop it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert httpx.get(f"{base_url}/models").json()["data"][0]["id"] == "m"
    finally:
        process.send_signal(2)  # SIGINT, as Ctrl-C
        assert process.wait(timeout=30) == 0


def test_real_recorded_rows_round_trip() -> None:
    path = DATASETS / "recorded" / "simpleqa" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    rows = list(islice(iter_records(path), 50))
    with ReplayServer(rows) as running:
        for row in (rows[0], rows[-1]):
            completion = sdk(running).chat.completions.create(model=row.model, messages=user(row.query))
            assert completion.choices[0].message.content == row.answer
            assert completion.usage is not None
            tokens = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
            assert tokens == (row.input_tokens, row.output_tokens)
        streamed = gather(chat(running, rows[1].model, stream_usage=True).stream(rows[1].query))
        assert streamed.content == rows[1].answer
        assert streamed.usage_metadata is not None
        assert streamed.usage_metadata["output_tokens"] == rows[1].output_tokens


def test_make_record_defaults() -> None:
    record = make_record("Q?", "A.", input_tokens=1, output_tokens=2)
    assert record == make_record("Q?", "A.", input_tokens=1, output_tokens=2)
    assert (record.model, record.correct, record.cost_usd) == ("replay-model", 1.0, 0.0)
    assert record.query_id == "q-" + hashlib.sha256(b"Q?").hexdigest()[:10]
