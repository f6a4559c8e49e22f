"""Scorers: the protocol, a function scorer and (lazily imported) the DistilBERT scorer."""

from typing import Any

from shared_scorer.scoring.base import FunctionScorer, Scorer, ScoreRequest, as_scorer, check_score

__all__ = ["FunctionScorer", "ScoreRequest", "Scorer", "as_scorer", "check_score"]


def __getattr__(name: str) -> Any:
    # DistilBertScorer pulls in numpy/sklearn and, when used, torch: import it only on first access.
    if name == "DistilBertScorer":
        from shared_scorer.scoring.distilbert import DistilBertScorer

        return DistilBertScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
