"""How the DistilBERT scorer reads a (query, answer) pair: token ids, head and tail kept, and batched logits.

Shared by the scorer (:mod:`shared_scorer.scoring.distilbert`), its training
(:mod:`shared_scorer.scoring.training`) and the cross-fitting of ``frugal fit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.data import Record
from shared_scorer.scoring.base import ScoreRequest

SHARED = ""
"""Key of the single network (and pooled calibrator) of the shared, model-aware variant."""


def head_tail(ids: list[int], budget: int, head_fraction: float = 0.5) -> list[int]:
    """Keep the first and last tokens of ``ids`` so that at most ``budget`` remain."""
    if len(ids) <= budget:
        return ids
    if budget <= 0:
        return []
    head = math.ceil(budget * head_fraction)
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


class PairEncoder:
    """Turns (query context, answer) into token ids of at most ``max_length``, question first.

    The question keeps all its tokens unless it would leave the answer less than half the room; the answer
    then keeps its first and last tokens.
    """

    def __init__(self, tokenizer: Any, max_length: int, model_aware: bool, head_fraction: float = 0.5) -> None:
        if max_length < 16:
            raise ConfigurationError(f"max_length must be >= 16, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.model_aware = model_aware
        self.head_fraction = head_fraction
        self._char_cap = 12 * max_length

    def context(self, query: str, model: str) -> str:
        return f"{model} | {query}" if self.model_aware and model else query

    def _clip_chars(self, text: str) -> str:
        cap = self._char_cap
        return text if len(text) <= 2 * cap else text[:cap] + " " + text[-cap:]

    def encode_pairs(self, contexts: Sequence[str], answers: Sequence[str]) -> list[list[int]]:
        tok = self.tokenizer
        if not contexts:
            return []
        cls, sep = tok.cls_token_id, tok.sep_token_id
        q_ids = tok([self._clip_chars(c) for c in contexts], add_special_tokens=False, verbose=False)["input_ids"]
        a_ids = tok([self._clip_chars(a) for a in answers], add_special_tokens=False, verbose=False)["input_ids"]
        room = self.max_length - 3
        out = []
        for q, a in zip(q_ids, a_ids, strict=True):
            q = head_tail(q, room - min(len(a), room // 2), self.head_fraction)
            a = head_tail(a, room - len(q), self.head_fraction)
            out.append([cls, *q, sep, *a, sep])
        return out

    def encode_records(self, records: Sequence[Record]) -> list[list[int]]:
        return self.encode_pairs([self.context(r.query, r.model) for r in records], [r.answer for r in records])

    def encode_requests(self, requests: Sequence[ScoreRequest]) -> list[list[int]]:
        return self.encode_pairs([self.context(r.query, r.model) for r in requests], [r.answer for r in requests])

    def collate(self, batch: Sequence[list[int]]) -> dict[str, Any]:
        import torch

        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


def predict_logits(
    net: Any, encoder: PairEncoder, rows: Sequence[Record] | Sequence[ScoreRequest], batch_size: int
) -> np.ndarray:
    """Raw logits for rows or requests, batched by similar length, under ``torch.inference_mode``."""
    import torch

    if not rows:
        return np.zeros(0)
    is_records = isinstance(rows[0], Record)
    encoded = encoder.encode_records(rows) if is_records else encoder.encode_requests(rows)  # type: ignore[arg-type]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = np.empty(len(encoded))
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            logits = net(**encoder.collate([encoded[i] for i in index])).logits[:, 0]
            out[index] = logits.float().numpy()
    net.train(was_training)
    return out
