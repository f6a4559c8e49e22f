"""MiniLMEmbedder gives what sentence-transformers gives for all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from shared_scorer.embeddings import MiniLMEmbedder, default_minilm_path
from shared_scorer.errors import CheckpointError, ConfigurationError

TEXTS = [
    "Who wrote Middlemarch?",
    "George Eliot wrote Middlemarch, published in 1871-72.",
    "The capital of Australia is Canberra, not Sydney.",
    "",
    "word " * 400,  # longer than the 256-token window: truncated the same way
    "Ünïcödé and emoji 🚀 survive tokenisation.",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder(batch_size=4, num_threads=1)


def test_matches_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(default_minilm_path()), device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    got = embedder.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384)
    assert got.dtype == np.float32
    cosine = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_unit_length_order_and_batching(embedder: MiniLMEmbedder) -> None:
    got = embedder.embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([embedder.embed_one(t) for t in TEXTS])
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    assert embedder.dim == 384
    assert embedder.embed([]).shape == (0, 384)


def test_similar_texts_are_closer(embedder: MiniLMEmbedder) -> None:
    a, b, c = embedder.embed(["Who wrote Middlemarch?", "Middlemarch author", "price of bananas in Peru"])
    assert a @ b > a @ c + 0.2


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(ConfigurationError):
        MiniLMEmbedder(batch_size=0)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        MiniLMEmbedder(model_path=tmp_path)
