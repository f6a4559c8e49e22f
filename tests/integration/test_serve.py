"""``frugal serve`` over real HTTP on 127.0.0.1, driven by the ``openai`` client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

from shared_scorer import TokenPrice
from shared_scorer.budget import Budget, Limit, MemoryLedger
from shared_scorer.budget.redis_server import free_port
from shared_scorer.hooks import Scope
from shared_scorer.replay.testing import make_record, replay_server
from tests.conftest import require

SMALL, BIG = "serve-small", "serve-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
QUESTION = "Who wrote Middlemarch?"
RECORDS = [
    make_record(QUESTION, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(QUESTION, "George Eliot, the pen name of Mary Ann Evans", model=BIG, input_tokens=12, output_tokens=9),
]
KEYS = {"sk-acme": {"tenant": "acme", "user": "svc"}, "sk-broke": {"tenant": "broke"}}


def cost(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(tokens_in, tokens_out)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Budget]]:
    import importlib.util

    for package in ("uvicorn", "starlette"):
        require(importlib.util.find_spec(package) is not None, f"{package} is not installed (pip install {package})")
    import uvicorn
    from langchain_openai import ChatOpenAI

    from frugal_langchain import FrugalChatModel
    from frugal_langchain.serve import make_app

    budget = Budget(MemoryLedger(), [Limit("tenant", "1", period="day"), Limit("tenant", "0.0001", tenant="broke")])
    with replay_server(RECORDS) as replay:

        def factory(budget: Budget | None) -> FrugalChatModel:
            stages = [
                ChatOpenAI(
                    model=m,
                    base_url=replay.base_url,
                    api_key="x",
                    max_retries=0,
                    timeout=5,
                    max_tokens=50,
                    stream_usage=True,
                )
                for m in (SMALL, BIG)
            ]
            scorer = lambda q, a: 0.9 if a.startswith("George") else 0.1  # noqa: E731
            return FrugalChatModel(stages=stages, scorer=scorer, thresholds=[0.5], prices=PRICES, budget=budget)

        port = free_port()
        config = uvicorn.Config(make_app(factory, KEYS, budget), host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}/v1", budget
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)


def test_plain_completion_escalates_and_charges_the_keys_tenant(served):
    base_url, budget = served
    before = budget.status(Scope("acme", "svc"))[0].spent_usd
    reply = client(base_url, "sk-acme").chat.completions.create(
        model="frugal", messages=[{"role": "user", "content": QUESTION}]
    )
    assert reply.choices[0].message.content == "George Eliot, the pen name of Mary Ann Evans"
    assert reply.model == BIG and reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (24, 12)
    trail = reply.model_extra["frugal"]
    assert [s["status"] for s in trail["stages"]] == ["rejected", "accepted"]
    expected = cost(SMALL, 12, 3) + cost(BIG, 12, 9)
    assert Decimal(trail["cost_usd"]) == expected
    assert budget.status(Scope("acme", "svc"))[0].spent_usd - before == expected


def test_streaming_completion(served):
    base_url, _ = served
    stream = client(base_url, "sk-acme").chat.completions.create(
        model="frugal", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "George Eliot, the pen name of Mary Ann Evans"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "streamed in pieces"
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and last.model == BIG
    assert last.usage.total_tokens == 36


def test_invalid_or_missing_key_is_refused(served):
    base_url, _ = served
    with pytest.raises(openai.AuthenticationError) as info:
        client(base_url, "sk-wrong").chat.completions.create(model="f", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    import httpx

    assert httpx.post(f"{base_url}/chat/completions", json={"messages": []}).status_code == 401
    assert client(base_url, "sk-acme").models.list().data[0].id == "frugal-cascade"


def test_budget_scope_follows_the_key(served):
    base_url, budget = served
    with pytest.raises(openai.RateLimitError) as info:
        client(base_url, "sk-broke").chat.completions.create(
            model="f", messages=[{"role": "user", "content": QUESTION}]
        )
    assert info.value.status_code == 429 and info.value.code == "budget_exceeded"
    assert "tenant 'broke' daily limit $0.0001: spent $0.00 + held $0.00, this stage (serve-small)" in str(info.value)
    assert budget.status(Scope("broke"))[0].spent_usd == 0
