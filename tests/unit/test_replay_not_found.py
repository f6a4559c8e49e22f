"""A prompt the replay server has no answer for: the 404 says what was asked, what is close, and how to add it.

RAG and agent prompts are long templates around a question; when one was not recorded, a bare "no
recorded answer" leaves the test author guessing which part differs. The error keeps its status (404)
and ``code`` (``query_not_found``), which clients and tests rely on, and adds the model, the first 200
characters of the prompt received, the three closest recorded prompts of that model and the way to add
a scenario.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from shared_scorer.server.replay import ReplayServer
from shared_scorer.server.testing import make_record, replay_server

MODEL, OTHER = "rag-model", "other-model"
RECORDS = [
    make_record("Who wrote Middlemarch?", "George Eliot.", model=MODEL),
    make_record("Who wrote Jane Eyre?", "Charlotte Bronte.", model=MODEL),
    make_record("What is the capital of France?", "Paris.", model=MODEL),
    make_record("Who painted the Mona Lisa?", "Leonardo da Vinci.", model=MODEL),
    make_record("Who wrote Middlemarch, the novel?", "Eliot.", model=OTHER),  # another model's: never offered
]
DOCS = "docs/replay-server.md"


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with replay_server(RECORDS) as running:
        yield running


def ask(server: ReplayServer, query: str, model: str = MODEL) -> httpx.Response:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": query}]
    return httpx.post(f"{server.base_url}/chat/completions", json={"model": model, "messages": messages})


def test_not_found_names_model_prompt_closest_and_how_to_add(server: ReplayServer) -> None:
    response = ask(server, "Who wrote Middlemarch? Answer in one word.")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "query_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["model"] == MODEL
    assert error["query"] == "Who wrote Middlemarch? Answer in one word."
    assert error["closest"] == ["Who wrote Middlemarch?", "Who wrote Jane Eyre?", "Who painted the Mona Lisa?"]
    assert error["docs"] == DOCS
    assert error["message"] == (
        'No recorded answer of model `rag-model` for the prompt "Who wrote Middlemarch? Answer in one word." '
        "(the last user message, first 200 characters). Closest recorded prompts of `rag-model`: "
        '"Who wrote Middlemarch?"; "Who wrote Jane Eyre?"; "Who painted the Mona Lisa?". '
        "To answer it, record it or add a scenario "
        '{"model": "rag-model", "match": "<text of the prompt>", "content": "<answer>"} '
        f"(see {DOCS})."
    )


def test_not_found_shows_only_the_first_200_characters_of_a_long_prompt(server: ReplayServer) -> None:
    context = "Context: " + "Middlemarch is a novel set in a provincial town. " * 20
    query = context + "\nQuestion: Who wrote Middlemarch?"
    error = ask(server, query).json()["error"]
    assert error["query"] == query[:200]
    assert len(error["query"]) == 200
    assert f"for the prompt {json.dumps(query[:200])} (" in error["message"]
    assert "Question:" not in error["message"]  # beyond the first 200 characters
    assert error["closest"][0] == "Who wrote Middlemarch?"
    assert len(error["closest"]) == 3


def test_the_openai_client_still_raises_not_found_with_the_hint(server: ReplayServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=5)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who wrote Emma?"}])
    assert raised.value.status_code == 404
    assert raised.value.code == "query_not_found"
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["closest"] == [r.query for r in RECORDS[:2]] + ["Who painted the Mona Lisa?"]
    assert "Closest recorded prompts of `rag-model`" in raised.value.message
    assert f"(see {DOCS})" in raised.value.message


def test_a_model_with_only_scenarios_has_no_closest_prompts() -> None:
    scenario = {"model": "tool-model", "match": "weather", "content": "Sunny."}
    with replay_server(RECORDS, [scenario]) as server:
        error = ask(server, "Who wrote Middlemarch?", model="tool-model").json()["error"]
    assert error["code"] == "query_not_found"
    assert error["closest"] == []
    assert "No prompt of `tool-model` is recorded." in error["message"]
