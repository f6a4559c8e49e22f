"""The conventions of the partner packages: ``__version__``, token counting, quiet loading, LangSmith params."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import frugal_langchain
import frugal_llamaindex
import shared_scorer

ROOT = Path(__file__).resolve().parents[2]


def pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^version = "([^"]+)"$', text, re.MULTILINE).group(1)


@pytest.mark.parametrize("package", [shared_scorer, frugal_langchain, frugal_llamaindex])
def test_every_package_has_the_distribution_version(package):
    assert package.__version__ == metadata.version("frugal-cascade") == pyproject_version()


def test_the_fallback_version_is_the_pyproject_one(monkeypatch):
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(shared_scorer._metadata, "version", missing)
    assert shared_scorer._installed_version() == pyproject_version() == "0.1.0"


# --- token counting asks the first stage -------------------------------------------------------------------


@pytest.fixture
def no_tiktoken_files(tmp_path, monkeypatch):
    """An empty tiktoken cache, and any download attempt fails loudly: the tests stay offline."""
    import tiktoken.load

    from shared_scorer import tokens as tokens_module

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    encoder_for = tokens_module._encoder_for
    encoder_for.cache_clear()

    def no_network(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    yield
    encoder_for.cache_clear()


def _cascade(first: Any) -> Any:
    from langchain_core.language_models import GenericFakeChatModel

    from frugal_langchain import FrugalChatModel

    big = GenericFakeChatModel(messages=iter(["big"]))
    return FrugalChatModel(
        stages=[first, big],
        scorer=lambda query, answer: 0.9,
        thresholds=[0.5],
        prices={"GenericFakeChatModel": (0, 0), "WordCounter": (0, 0), "gpt-4o-mini": (0, 0)},
    )


def test_token_counts_are_the_first_stages_own(recwarn):
    """A stage with its own tokenizer counts: here one token per word, and the cascade says the same."""
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage

    class WordCounter(GenericFakeChatModel):
        def get_token_ids(self, text: str) -> list[int]:
            return list(range(len(text.split())))

    llm = _cascade(WordCounter(messages=iter(["small"])))
    assert llm.get_num_tokens("hello big world") == 3
    messages = [HumanMessage("hello big world"), AIMessage("a b")]
    # LangChain's default per-message count: "Human: hello big world" and "AI: a b"
    assert llm.get_num_tokens_from_messages(messages) == 4 + 3
    assert [str(w.message) for w in recwarn] == []


def test_a_stage_without_a_tokenizer_gets_the_offline_estimate_not_gpt2(recwarn, no_tiktoken_files):
    """LangChain's fallback (GPT-2 from the Hub, with a warning) is not used: ceil(UTF-8 bytes / 3)."""
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import HumanMessage

    llm = _cascade(GenericFakeChatModel(messages=iter(["small"])))
    assert llm.get_num_tokens("hello world") == 4  # ceil(11 / 3)
    # (ceil(11 / 3) + 4 per message) + (ceil(2 / 3) + 4) + 3 for the reply
    assert llm.get_num_tokens_from_messages([HumanMessage("hello world"), HumanMessage("hi")]) == 8 + 5 + 3
    assert [str(w.message) for w in recwarn] == []


def test_an_openai_first_stage_counts_offline_without_downloading(no_tiktoken_files):
    """ChatOpenAI's own count would fetch tiktoken's encoding file; with none on disk the cascade estimates."""
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    small = ChatOpenAI(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1", api_key="test")
    llm = _cascade(small)
    assert llm.get_num_tokens("hello world") == 4
    assert llm.get_num_tokens_from_messages([HumanMessage("hello world")]) == 4 + 4 + 3


def test_an_openai_first_stage_with_its_encoding_on_disk_is_asked(monkeypatch, no_tiktoken_files):
    from langchain_openai import ChatOpenAI

    from shared_scorer import tokens as tokens_module

    small = ChatOpenAI(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1", api_key="test")
    monkeypatch.setattr(tokens_module, "_encoder_for", lambda model: object())
    monkeypatch.setattr(type(small), "get_num_tokens", lambda self, text: 42)
    assert _cascade(small).get_num_tokens("hello world") == 42
