"""The local MiniLM sentence embeddings as a LangChain ``Embeddings`` (offline, no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 embeddings from local weights, for vector stores and the answer cache.

    The model loads on first use, so construction is cheap.

    Example:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore
            from frugal_langchain.embeddings import MiniLMEmbeddings

            store = InMemoryVectorStore(MiniLMEmbeddings())
            store.add_texts(["George Eliot wrote Middlemarch."])
    """

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64, num_threads: int | None = None):
        self.model_path = model_path
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._embedder: Any = None

    @property
    def embedder(self) -> Any:
        """The underlying ``shared_scorer.embeddings.MiniLMEmbedder`` (loaded on first use)."""
        if self._embedder is None:
            from shared_scorer.embeddings import MiniLMEmbedder

            self._embedder = MiniLMEmbedder(self.model_path, batch_size=self.batch_size, num_threads=self.num_threads)
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [row.tolist() for row in self.embedder.embed(texts)]

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in self.embedder.embed_one(text)]
