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

LEAD_SHARE = 0.25
"""The share of the room the profile and system prompt are always given, when a pair has them."""

SHARED = ""
"""Key of the single network (and pooled calibrator) of the shared, model-aware variant."""


def request_of(record: Record) -> ScoreRequest:
    """The :class:`ScoreRequest` a recorded row stands for (its usage and context included)."""
    return ScoreRequest(
        record.query,
        record.answer,
        record.model,
        output_tokens=record.output_tokens,
        logprob=record.logprob,
        system=record.system or "",
        history=record.history or (),
        profile=record.profile or "",
    )


def head_tail(ids: list[int], budget: int, head_fraction: float = 0.5) -> list[int]:
    """Keep the first and last tokens of ``ids`` so that at most ``budget`` remain."""
    if len(ids) <= budget:
        return ids
    if budget <= 0:
        return []
    head = math.ceil(budget * head_fraction)
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def context_texts(
    profile: str | None, system: str | None, history: Sequence[str] | None, tool_results: Sequence[str] = ()
) -> tuple[list[str], int]:
    """The context of a pair as the texts it is encoded from, in reading order, and how many lead them.

    ``profile: ... |`` and ``system: ... |`` lead (when given); then each earlier turn (already
    ``"role: text"``) and each tool result (``tool: ... |``), oldest first. Empty parts are left out.
    """
    lead = [f"{label}: {text} |" for label, text in (("profile", profile), ("system", system)) if text]
    turns = [f"{h} |" for h in history or () if h] + [f"tool: {t} |" for t in tool_results if t]
    return lead + turns, len(lead)


def fit_context(parts: Sequence[list[int]], lead: int, room: int, head_fraction: float = 0.5) -> list[int]:
    """The context tokens kept in ``room``: the ``lead`` parts (profile, system) first, then the other parts
    newest first; the first part that does not fit whole is cut (a lead part to its head and tail, a turn
    to its newest tokens) and every older one is dropped. Kept parts stay in reading order."""
    kept: dict[int, list[int]] = {}
    for j in [*range(lead), *reversed(range(lead, len(parts)))]:
        if room <= 0:
            break
        ids = parts[j]
        if len(ids) > room:
            ids = head_tail(ids, room, head_fraction) if j < lead else ids[len(ids) - room :]
        kept[j] = ids
        room -= len(ids)
    return [t for j in sorted(kept) for t in kept[j]]


class PairEncoder:
    """Turns (query context, answer) into token ids of at most ``max_length``, question first.

    The question keeps all its tokens unless it would leave the answer less than half the room; the answer
    then keeps its first and last tokens.

    With ``with_context`` (a scorer fitted with context), the caller's context is read too::

        [CLS] profile: P | system: S | user: ... | assistant: ... | tool: R | model | query [SEP] answer [SEP]

    The query and the answer come first and are cut as without context, except that the profile and the
    system prompt are always given up to ``LEAD_SHARE`` (a quarter) of the room: where they would not fit
    in what the query and answer leave, the two are cut (as without context) to the room less that share.
    The context then takes what room is left, in this order: the profile, the system prompt, then the
    earlier turns and tool results from the newest back, the oldest cut first (see :func:`fit_context`).
    Why the share: a short profile often decides whether an answer is right for its caller, and the long
    answers that fill the room are the ones a caller's requirement most often rules out (see
    ``benchmarks/context_eval.py``). A pair without context is encoded byte for byte as without
    ``with_context``; a scorer fitted without it ignores any context.
    """

    def __init__(
        self, tokenizer: Any, max_length: int, model_aware: bool, head_fraction: float = 0.5, with_context: bool = False
    ) -> None:
        if max_length < 16:
            raise ConfigurationError(f"max_length must be >= 16, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.model_aware = model_aware
        self.head_fraction = head_fraction
        self.with_context = with_context
        self._char_cap = 12 * max_length

    def context(self, query: str, model: str) -> str:
        return f"{model} | {query}" if self.model_aware and model else query

    def _clip_chars(self, text: str) -> str:
        cap = self._char_cap
        return text if len(text) <= 2 * cap else text[:cap] + " " + text[-cap:]

    def encode_pairs(
        self,
        contexts: Sequence[str],
        answers: Sequence[str],
        extras: Sequence[tuple[list[str], int]] | None = None,
    ) -> list[list[int]]:
        """Token ids of each (query context, answer) pair; ``extras`` (per pair, :func:`context_texts`)
        are read only ``with_context``."""
        tok = self.tokenizer
        if not contexts:
            return []
        cls, sep = tok.cls_token_id, tok.sep_token_id
        q_ids = tok([self._clip_chars(c) for c in contexts], add_special_tokens=False, verbose=False)["input_ids"]
        a_ids = tok([self._clip_chars(a) for a in answers], add_special_tokens=False, verbose=False)["input_ids"]
        parts = self._context_ids(extras) if self.with_context and extras is not None else None
        room = self.max_length - 3
        out = []
        for n, (q, a) in enumerate(zip(q_ids, a_ids, strict=True)):
            reserve = 0
            if parts:
                lead = sum(len(ids) for ids in parts[n][0][: parts[n][1]])
                reserve = min(lead, int(room * LEAD_SHARE))
            q, a = self._cut(q, a, room)
            if reserve and room - len(q) - len(a) < reserve:
                q, a = self._cut(q_ids[n], a_ids[n], room - reserve)
            c = fit_context(parts[n][0], parts[n][1], room - len(q) - len(a), self.head_fraction) if parts else []
            out.append([cls, *c, *q, sep, *a, sep])
        return out

    def _cut(self, q: list[int], a: list[int], room: int) -> tuple[list[int], list[int]]:
        """The query and answer in ``room``: the query whole unless it would leave the answer less than half."""
        q = head_tail(q, room - min(len(a), room // 2), self.head_fraction)
        return q, head_tail(a, room - len(q), self.head_fraction)

    def _context_ids(self, extras: Sequence[tuple[list[str], int]]) -> list[tuple[list[list[int]], int]]:
        """Each pair's context parts as token ids (one tokenizer call for all of them)."""
        flat = [self._clip_chars(t) for texts, _ in extras for t in texts]
        ids = self.tokenizer(flat, add_special_tokens=False, verbose=False)["input_ids"] if flat else []
        out, start = [], 0
        for texts, lead in extras:
            out.append((list(ids[start : start + len(texts)]), lead))
            start += len(texts)
        return out

    def encode_records(self, records: Sequence[Record]) -> list[list[int]]:
        extras = [context_texts(r.profile, r.system, r.history) for r in records] if self.with_context else None
        return self.encode_pairs([self.context(r.query, r.model) for r in records], [r.answer for r in records], extras)

    def encode_requests(self, requests: Sequence[ScoreRequest]) -> list[list[int]]:
        extras = (
            [context_texts(r.profile, r.system, r.history, r.tool_results) for r in requests]
            if self.with_context
            else None
        )
        return self.encode_pairs(
            [self.context(r.query, r.model) for r in requests], [r.answer for r in requests], extras
        )

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
