"""Labelled question pairs (``{"cached", "incoming", "duplicate"}`` JSON Lines), their fixed split, and
the figures of a cache decision on them: duplicate hit rate, wrong-hit share, precision-recall curve.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.errors import DataError
from shared_scorer.jsonl import iter_json_lines


@dataclass(frozen=True)
class Pair:
    """A question already answered (``cached``), a new one (``incoming``), and whether they ask the same."""

    cached: str
    incoming: str
    duplicate: bool

    def heldout(self, fraction: float = 0.2) -> bool:
        """Whether this pair is in the held-out split (a fixed hash of the two questions, not random)."""
        digest = hashlib.sha256(f"{self.cached}\x1f{self.incoming}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_pairs(path: str | Path, limit: int | None = None) -> list[Pair]:
    """Read a pairs file; a malformed line is a :class:`DataError` naming ``file:line`` and the field."""
    path = Path(path)
    pairs: list[Pair] = []
    for where, row in iter_json_lines(path, "pairs"):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with cached, incoming, duplicate")
        for field in ("cached", "incoming"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise DataError(f"{where}: field {field!r} must be a non-empty string, got {row.get(field)!r:.60}")
        label = row.get("duplicate")
        if isinstance(label, bool) or label not in (0, 1):
            raise DataError(f"{where}: field 'duplicate' must be 0 or 1, got {label!r:.40}")
        pairs.append(Pair(row["cached"], row["incoming"], bool(label)))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


def split_pairs(pairs: Sequence[Pair], heldout_fraction: float = 0.2) -> tuple[list[Pair], list[Pair]]:
    """``(train, heldout)`` by :meth:`Pair.heldout`: the same pair always lands on the same side."""
    heldout = [p.heldout(heldout_fraction) for p in pairs]
    return [p for p, h in zip(pairs, heldout, strict=True) if not h], [
        p for p, h in zip(pairs, heldout, strict=True) if h
    ]


def hit_figures(hits: np.ndarray, duplicate: np.ndarray) -> dict[str, Any]:
    """``duplicate_hit_rate`` (duplicates served / duplicates) and ``wrong_hit_share`` (hits on
    non-duplicates / hits; ``None`` without hits) of boolean hit decisions."""
    hits = np.asarray(hits, dtype=bool)
    duplicate = np.asarray(duplicate, dtype=bool)
    n_hits = int(hits.sum())
    wrong = int((hits & ~duplicate).sum())
    return {
        "pairs": len(hits),
        "duplicates": int(duplicate.sum()),
        "hits": n_hits,
        "wrong_hits": wrong,
        "duplicate_hit_rate": round(float((hits & duplicate).sum() / max(1, duplicate.sum())), 4),
        "wrong_hit_share": round(wrong / n_hits, 4) if n_hits else None,
    }


def pr_curve(scores: np.ndarray, duplicate: np.ndarray, points: int = 21) -> list[dict[str, float]]:
    """Precision (1 - wrong-hit share) and recall (duplicate hit rate) when serving every pair whose
    score is at least each threshold; ``scores`` of pairs that can never hit are ``-inf``."""
    scores = np.asarray(scores, dtype=float)
    duplicate = np.asarray(duplicate, dtype=bool)
    finite = scores[np.isfinite(scores)]
    if len(finite) == 0:
        return []
    thresholds = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, points)))
    curve = []
    for t in thresholds:
        hits = scores >= t
        n = int(hits.sum())
        curve.append(
            {
                "threshold": round(float(t), 6),
                "recall": round(float((hits & duplicate).sum() / max(1, duplicate.sum())), 4),
                "precision": round(float((hits & duplicate).sum() / n), 4) if n else 1.0,
                "hits": n,
            }
        )
    return curve
