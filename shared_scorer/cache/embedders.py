"""Embedders for the answer cache: the local MiniLM, any LangChain or LlamaIndex embedding model, or a
fast hashing embedder for tests.

Frameworks are recognised by duck typing, never imported: a LangChain ``Embeddings`` has
``embed_documents``; a LlamaIndex ``BaseEmbedding`` has ``get_text_embedding_batch``; anything with
``embed(list[str])`` (such as :class:`~shared_scorer.embeddings.MiniLMEmbedder`) is used as it is.
Every vector the cache sees is float32 and L2-normalised, so a dot product is a cosine. The MiniLM
encoder itself lives in :mod:`shared_scorer.embeddings`; this module only adapts encoders to the cache.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shared_scorer.errors import ConfigurationError


@runtime_checkable
class Embedder(Protocol):
    """What the cache calls: ``embed(texts) -> (n, dim) float32`` unit rows."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalise_rows(vectors: Any) -> np.ndarray:
    """``vectors`` as a float32 matrix of unit rows (a zero row stays zero)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ConfigurationError(f"an embedder must return one vector per text, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


class _Adapted:
    """An embedder built from a framework's embedding model or a plain function."""

    def __init__(self, fn: Callable[[list[str]], Any], source: object) -> None:
        self._fn = fn
        self.source = source

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        out = normalise_rows(self._fn(texts))
        if len(out) != len(texts):
            raise ConfigurationError(f"embedder {self.source!r:.80} returned {len(out)} vectors for {len(texts)}")
        return out

    def __repr__(self) -> str:
        return f"Embedder({self.source!r:.80})"


def as_embedder(model: object | None) -> Embedder:
    """An :class:`Embedder` for ``model``.

    ``None`` gives the local all-MiniLM-L6-v2 (:class:`~shared_scorer.embeddings.MiniLMEmbedder`, loaded on
    first use). A LangChain ``Embeddings`` (``embed_documents``), a LlamaIndex ``BaseEmbedding``
    (``get_text_embedding_batch``), an object with ``embed(list[str])`` or a function of a list of texts
    are accepted; their vectors are L2-normalised.

    >>> embedder = as_embedder(HashingEmbedder(dim=64))
    >>> embedder.embed(["a question"]).shape
    (1, 64)
    """
    if model is None:
        return LazyMiniLM()
    if hasattr(model, "embed_documents"):  # LangChain Embeddings
        return _Adapted(model.embed_documents, model)
    if hasattr(model, "get_text_embedding_batch"):  # LlamaIndex BaseEmbedding
        return _Adapted(model.get_text_embedding_batch, model)
    if hasattr(model, "embed"):
        return _Adapted(model.embed, model)
    if callable(model):
        return _Adapted(model, model)
    raise ConfigurationError(
        f"embedder must be a LangChain Embeddings, a LlamaIndex BaseEmbedding, an object with embed(texts) "
        f"or a function, got {type(model).__name__}"
    )


class RecentMemo:
    """Remembers the last ``size`` texts' vectors (a lookup's query is embedded once, not again by the
    verifier).

    >>> memo = RecentMemo(HashingEmbedder(dim=16))
    >>> bool((memo.embed(["a"]) == memo.embed(["a"])).all())
    True
    """

    def __init__(self, inner: Embedder, size: int = 256) -> None:
        self.inner = inner
        self.size = size
        self._table: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return repr(self.inner)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._table))
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing), strict=True):
                self._table[text] = vector
            while len(self._table) > self.size:
                del self._table[next(iter(self._table))]
        if not texts:
            return self.inner.embed([])
        return np.stack([self._table[t] if t in self._table else self.inner.embed([t])[0] for t in texts])


class LazyMiniLM:
    """The local MiniLM, loaded on the first ``embed`` (so that building a cache stays cheap).

    >>> LazyMiniLM().dim
    384
    """

    dim = 384

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._model: Any = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            from shared_scorer.embeddings import MiniLMEmbedder

            self._model = MiniLMEmbedder(**self._options)
        return normalise_rows(self._model.embed(list(texts))) if texts else np.zeros((0, self.dim), np.float32)


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """A fast deterministic bag-of-words embedder (signed feature hashing of words and word pairs).

    Meant for tests and for caches that only need near-verbatim matches; it knows no synonyms.

    >>> e = HashingEmbedder(dim=256)
    >>> v = e.embed(["What is the capital of France?", "what is the capital of france", "Who wrote Emma?"])
    >>> round(float(v[0] @ v[1]), 3), bool(v[0] @ v[2] < 0.5)
    (1.0, True)
    """

    def __init__(self, dim: int = 384) -> None:
        if dim < 8:
            raise ConfigurationError(f"dim must be >= 8, got {dim}")
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
            features = words + [a + " " + b for a, b in itertools.pairwise(words)]
            for feature in features:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
        return normalise_rows(out) if len(texts) else out
