"""The error bound: which candidates each cached entry may serve, given what callers said about its hits.

:class:`AnswerCache` (``max_wrong_rate=``) takes its global operating point (a cosine floor and a verifier
threshold) from the verifier's validation curve: the point serving the most validation duplicates whose
wrong-hit share, counted with the verifier's margin, stays <= the bound. Each entry then adapts, in the
spirit of vCache (arXiv 2502.03771), from the feedback callers give on its hits
(:meth:`AnswerCache.feedback`); the rule, exactly:

* **wrong hit**: the entry's ``wrong_score`` becomes the verifier score that hit was served at (the highest
  such score so far), and from then on the entry serves only candidates scoring *strictly above* it. A
  wrong mark on an exact hit (score 2.0) stops the entry from serving at all; ``block_after`` wrong marks
  (default 2) stop its semantic hits (exact ones go on: the cascade answered that very question).
* **confirmed hit**: counts as evidence. While the 95% upper bound of the entry's wrong rate under a
  uniform prior, the ``evidence`` quantile of Beta(wrong + 1, confirmed + 1), is <= ``max_wrong_rate``,
  the entry uses the looser operating point chosen on the same curve for ``loosen_factor`` times the
  bound (default 2x); otherwise the global one. With no wrong mark that takes 58 confirmations at a 5%
  bound (1 - 0.05 ** (1 / 59) = 0.0495); with one wrong mark, 91. A tightened entry stays above its
  ``wrong_score`` even when loosened. Without ``max_wrong_rate`` entries never loosen.

>>> round(wrong_rate_upper(0, 58), 4), round(wrong_rate_upper(0, 57), 4), round(wrong_rate_upper(1, 91), 5)
(0.0495, 0.0503, 0.04999)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shared_scorer.cache.store import Entry

EXACT_SCORE = 2.0
"""The score recorded for an exact hit: above any probability or cosine."""


@dataclass(frozen=True)
class OperatingPoint:
    """Serve a candidate when its cosine >= ``min_similarity`` and its verifier score >= ``threshold``."""

    min_similarity: float
    threshold: float
    estimated_wrong_share: float | None = None
    """The wrong-hit share this point had on the verifier's validation pairs (``None``: unknown)."""


def wrong_rate_upper(wrong: int, confirmed: int, evidence: float = 0.95) -> float:
    """The ``evidence`` quantile of Beta(wrong + 1, confirmed + 1): an upper bound of an entry's wrong rate."""
    from scipy.special import betaincinv

    return float(betaincinv(wrong + 1, confirmed + 1, evidence))


class EntryPolicy:
    """The per-entry rule above, given the global point and (with a bound) the looser one."""

    def __init__(
        self,
        point: OperatingPoint,
        *,
        loose: OperatingPoint | None = None,
        max_wrong_rate: float | None = None,
        block_after: int = 2,
        evidence: float = 0.95,
    ) -> None:
        self.point = point
        looser = loose is not None and (
            loose.threshold <= point.threshold and loose.min_similarity <= point.min_similarity
        )  # the point of the wider bound, when it is no stricter in either dimension
        self.loose = loose if max_wrong_rate is not None and looser else None
        self.max_wrong_rate = max_wrong_rate
        self.block_after = block_after
        self.evidence = evidence

    @property
    def search_floor(self) -> float:
        """The lowest cosine any entry may serve at (the store is asked for candidates above it)."""
        return min(self.point.min_similarity, self.loose.min_similarity if self.loose else math.inf)

    def exact_allowed(self, entry: Entry) -> bool:
        """Exact hits stop only when an exact hit of the entry was marked wrong."""
        return entry.wrong_score is None or entry.wrong_score < EXACT_SCORE

    def trusted(self, entry: Entry) -> bool:
        """Whether the evidence allows the looser point (see the module's rule)."""
        if self.loose is None or self.max_wrong_rate is None:
            return False
        return wrong_rate_upper(entry.wrong, entry.confirmed, self.evidence) <= self.max_wrong_rate

    def for_entry(self, entry: Entry) -> OperatingPoint | None:
        """The entry's own operating point, or ``None`` when it may serve no semantic hit."""
        if entry.wrong >= self.block_after or not self.exact_allowed(entry):
            return None
        base = self.loose if self.loose is not None and self.trusted(entry) else self.point
        threshold = base.threshold
        if entry.wrong_score is not None:
            threshold = max(threshold, math.nextafter(entry.wrong_score, math.inf))
        return OperatingPoint(base.min_similarity, threshold, base.estimated_wrong_share)

    def state(self, entry: Entry) -> dict[str, Any]:
        """What the cache knows and decides about one entry (for logs, tests and operators)."""
        point = self.for_entry(entry)
        return {
            "entry_id": entry.id,
            "confirmed": entry.confirmed,
            "wrong": entry.wrong,
            "wrong_score": entry.wrong_score,
            "last_score": entry.last_score,
            "wrong_rate_upper": round(wrong_rate_upper(entry.wrong, entry.confirmed, self.evidence), 6),
            "trusted": self.trusted(entry),
            "exact_allowed": self.exact_allowed(entry),
            "semantic_blocked": point is None,
            "min_similarity": None if point is None else point.min_similarity,
            "threshold": None if point is None else point.threshold,
        }
