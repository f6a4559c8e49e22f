"""A scorer that reads the recorded labels: the upper bound of what any scorer could do.

It is not a model and never claims to be one; it exists so that the cascade's mechanics can be shown
apart from the scorer's quality (``frugal eval --scorer oracle``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shared_scorer.errors import ScorerError
from shared_scorer.fitting.data import Record
from shared_scorer.scoring.base import ScoreRequest


class OracleScorer:
    """Scores an answer 1.0 if the recorded label of (query, model) says correct, else 0.0.

    >>> from shared_scorer.fitting.data import Record
    >>> oracle = OracleScorer([Record("q1", "2+2?", "m", "4", 1.0, 0.0)])
    >>> oracle.score(ScoreRequest("2+2?", "4", model="m"))
    1.0
    """

    def __init__(self, records: Iterable[Record]) -> None:
        self._labels = {(r.query, r.model): r.correct for r in records}

    def score(self, request: ScoreRequest) -> float:
        try:
            return self._labels[(request.query, request.model)]
        except KeyError:
            raise ScorerError(
                f"oracle has no recorded label for model {request.model!r} and query {request.query[:80]!r}"
            ) from None

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return [self.score(r) for r in requests]
