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


# --- loading a model prints no progress bar ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder_folder(tmp_path_factory):
    """A tiny random DistilBERT encoder saved as a Hugging Face folder (as MiniLM's is), and its tokenizer."""
    from shared_scorer.scoring.backbone import load_backbone

    folder = tmp_path_factory.mktemp("tiny-encoder")
    backbone = load_backbone("tiny-random", seed=0)
    backbone.model.distilbert.save_pretrained(str(folder))
    backbone.tokenizer.save_pretrained(str(folder))
    return folder


def test_loading_the_encoder_prints_no_progress_bar(tiny_encoder_folder, capfd):
    from transformers.utils import logging as hf_logging

    from shared_scorer import embeddings

    capfd.readouterr()
    _tokenizer, model = embeddings._load(tiny_encoder_folder, "cpu")
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err
    assert (out, err) == ("", "")
    assert model.config.dim == 32
    assert hf_logging.is_progress_bar_enabled()  # silenced only around our load


def test_loading_a_scorer_prints_nothing(tmp_path, capfd):
    from shared_scorer.fitting.data import Record
    from shared_scorer.scoring.distilbert import DistilBertScorer

    rows = [Record(f"q{i}", f"question {i}?", "m", "yes" if i % 2 else "no", float(i % 2), 0.0) for i in range(12)]
    DistilBertScorer.train(rows, backbone="tiny-random", epochs=1, progress=False).save(tmp_path / "scorer")
    capfd.readouterr()
    scorer = DistilBertScorer.load(tmp_path / "scorer")
    assert capfd.readouterr() == ("", "")
    assert scorer.models == ["m"]


def test_quiet_loading_restores_what_the_user_chose():
    from transformers.utils import logging as hf_logging

    from shared_scorer.embeddings import quiet_loading

    hf_logging.disable_progress_bar()
    try:
        with quiet_loading():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
    with quiet_loading():
        with quiet_loading():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()


# --- tracing names the cascade and the stage that answered -------------------------------------------------


def _two_named_fakes() -> tuple[Any, Any]:
    from langchain_core.language_models import GenericFakeChatModel

    class SmallFake(GenericFakeChatModel):
        pass

    class BigFake(GenericFakeChatModel):
        pass

    return SmallFake(messages=iter(["small"])), BigFake(messages=iter(["big"]))


def test_langsmith_params_name_the_cascade_and_the_trace_names_the_answering_stage():
    from langchain_core.tracers.context import collect_runs

    from frugal_langchain import FrugalChatModel

    small, big = _two_named_fakes()
    llm = FrugalChatModel(
        stages=[small, big],
        scorer=lambda query, answer: 0.9 if answer == "big" else 0.1,
        thresholds=[0.5],
        prices={"SmallFake": (1, 2), "BigFake": (3, 4)},
        temperature=0.25,
    )
    assert llm._get_ls_params(stop=["\n"]) == {
        "ls_provider": "frugal",
        "ls_model_name": "frugal-cascade",
        "ls_model_type": "chat",
        "ls_temperature": 0.25,
        "ls_stop": ["\n"],
    }
    with collect_runs() as collector:
        message = llm.invoke("Who wrote Middlemarch?")
    assert message.content == "big" and message.response_metadata["model_name"] == "BigFake"
    (run,) = collector.traced_runs
    assert run.extra["metadata"]["ls_provider"] == "frugal"
    assert run.extra["metadata"]["ls_model_name"] == "frugal-cascade"
    # the cascade's own run records which stage answered, next to the two stage runs it parents
    assert run.outputs["llm_output"] == {"model_name": "BigFake", "frugal_stage": 1}
    # each stage's run keeps its own LangSmith params, not the cascade's (they were inherited before)
    children = {child.tags[-1]: child.extra["metadata"] for child in run.child_runs}
    assert {tag: meta["ls_provider"] for tag, meta in children.items()} == {
        "frugal:stage=0": "smallfake",
        "frugal:stage=1": "bigfake",
    }
    assert all("ls_model_name" not in meta for meta in children.values())  # the fakes name no model


def test_llamaindex_spans_carry_the_answering_stage():
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
    from llama_index.core.llms import ChatMessage, MockLLM

    from frugal_llamaindex import FrugalLLM

    class SmallMock(MockLLM):
        pass

    llm = FrugalLLM(
        stages=[SmallMock(), MockLLM()],
        scorer=lambda query, answer: 0.1,
        thresholds=[0.5],
        prices={"SmallMock": (0, 0), "MockLLM": (0, 0)},
    )
    seen: list[tuple[str, Any]] = []

    class Recorder(SimpleSpanHandler):
        def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Any = None, result: Any = None, **kw: Any):
            if isinstance(instance, FrugalLLM):
                seen.append((id_, result))
            return super().prepare_to_exit_span(id_, bound_args, instance=instance, result=result, **kw)

    root = get_dispatcher()
    handler = Recorder()
    root.add_span_handler(handler)
    try:
        llm.chat([ChatMessage(role="user", content="Who wrote Middlemarch?")])
    finally:
        root.span_handlers.remove(handler)
    ((span_id, response),) = seen
    assert span_id.startswith("FrugalLLM.chat-")
    assert response.additional_kwargs["frugal"]["model"] == "MockLLM"
    assert response.additional_kwargs["frugal"]["stage"] == 1
