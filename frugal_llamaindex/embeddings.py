"""The local MiniLM sentence embeddings as a LlamaIndex ``BaseEmbedding`` (offline, no hub)."""

from __future__ import annotations

from typing import Any

from llama_index.core.embeddings import BaseEmbedding
from pydantic import Field, PrivateAttr


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 embeddings from local weights, for ``VectorStoreIndex`` and the answer cache.

    The model loads on first use, so construction is cheap.

    Example:
        .. code-block:: python

            from llama_index.core import Document, VectorStoreIndex
            from frugal_llamaindex.embeddings import MiniLMEmbedding

            index = VectorStoreIndex.from_documents(
                [Document(text="George Eliot wrote Middlemarch.")], embed_model=MiniLMEmbedding()
            )
    """

    model_path: str | None = Field(default=None, description="Local model folder (default: the packaged MiniLM).")
    model_name: str = Field(default="all-MiniLM-L6-v2")
    _embedder: Any = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    @property
    def embedder(self) -> Any:
        """The underlying ``shared_scorer.embeddings.MiniLMEmbedder`` (loaded on first use)."""
        if self._embedder is None:
            from shared_scorer.embeddings import MiniLMEmbedder

            self._embedder = MiniLMEmbedder(self.model_path, batch_size=self.embed_batch_size)
        return self._embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in self.embedder.embed_one(query)]

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(x) for x in self.embedder.embed_one(text)]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [row.tolist() for row in self.embedder.embed(texts)]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
