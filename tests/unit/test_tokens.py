"""Token estimates for stages whose provider reports no usage (a streamed reply without usage, say)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from shared_scorer import Cascade, StageOutput
from shared_scorer import tokens as tokens_module
from shared_scorer.tokens import estimate_prompt_tokens, estimate_tokens


@pytest.fixture(autouse=True)
def _no_tiktoken_files(tmp_path, monkeypatch):
    """Point tiktoken at an empty cache and make any download attempt fail loudly: tests stay offline."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    tokens_module._encoder_for.cache_clear()
    try:
        import tiktoken.load
    except ImportError:  # pragma: no cover - tiktoken is optional
        yield
        return

    def no_network(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    yield
    tokens_module._encoder_for.cache_clear()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 1),
        ("abc", 1),
        ("abcd", 2),
        ("Hello, world!", 5),  # 13 bytes -> ceil(13 / 3)
        ("héllo", 2),  # 6 UTF-8 bytes
        ("日本語", 3),  # 9 UTF-8 bytes
    ],
)
def test_approximation_is_utf8_bytes_over_three_rounded_up(text, expected):
    assert estimate_tokens(text, "some-local-model") == expected


def test_openai_model_without_cached_encoding_falls_back_offline():
    # gpt-4o maps to o200k_base, whose BPE file is not in the (empty) cache: no download, the approximation.
    assert estimate_tokens("Hello, world!", "gpt-4o") == 5
    assert estimate_tokens("Hello, world!", "openai/gpt-4o-mini") == 5
    assert estimate_tokens("Hello, world!", "openai:gpt-4o") == 5


def test_prompt_estimate_adds_four_per_message_and_three_for_the_reply():
    # ceil(8 / 3) + ceil(13 / 3) = 3 + 5, then 4 per message * 2 and 3 for the reply
    assert estimate_prompt_tokens(["Be brief", "Hello, world!"], "m") == 3 + 5 + 8 + 3
    assert estimate_prompt_tokens([], "m") == 3


def test_an_encoding_on_disk_is_used_and_loaded_once(monkeypatch):
    loaded = []

    class Words:
        def encode(self, text: str, disallowed_special=()):
            return text.split()

    def load(name: str):
        loaded.append(name)
        return Words()

    monkeypatch.setattr(tokens_module, "_on_disk", lambda name: True)
    monkeypatch.setattr(tokens_module, "_load_encoder", load)
    tokens_module._encoder_for.cache_clear()
    for _ in range(3):
        assert estimate_tokens("one two three four", "gpt-4o") == 4
    assert loaded == ["o200k_base"]
    # a model tiktoken does not know keeps the approximation: ceil(18 / 3)
    assert estimate_tokens("one two three four", "claude-3-5-haiku") == 6


def test_a_corrupt_cached_encoding_is_not_used(tmp_path, monkeypatch):
    import hashlib

    cache = tmp_path / "cache"
    cache.mkdir()
    url = tokens_module._ENCODING_FILES["o200k_base"][0]
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"not a BPE file")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tokens_module._encoder_for.cache_clear()
    # tiktoken would delete the bad file and download it again: we fall back instead
    assert estimate_tokens("Hello, world!", "gpt-4o") == 5


def test_estimated_usage_is_priced_and_flagged():
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices={"small": (1, 2)})
    output = StageOutput("hello", 100, 10, usage_estimated=True)
    result = cascade.run("q", [lambda: output])
    attempt = result.attempts[0]
    assert attempt.usage_estimated is True
    assert attempt.usage_reported is False
    # priced on the estimate, not $0: 100 * 1 / 1e6 + 10 * 2 / 1e6
    assert result.cost_usd == Decimal("0.00012")
    assert result.trail()["stages"][0]["usage_estimated"] is True
    summary = cascade.tracker.summary()
    assert summary["stage_calls_with_estimated_usage"] == 1
    assert summary["stage_calls_without_usage"] == 0
    json.dumps(result.trail()["stages"][0]["usage_estimated"])


def test_reported_usage_is_not_estimated():
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices={"small": (1, 2)})
    result = cascade.run("q", [lambda: StageOutput("hello", 100, 10)])
    assert result.attempts[0].usage_estimated is False
    assert result.attempts[0].usage_reported is True
    assert cascade.tracker.summary()["stage_calls_with_estimated_usage"] == 0
