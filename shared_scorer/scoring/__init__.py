"""Scorers: the protocol, a function scorer and (lazily imported) the DistilBERT scorer."""

from shared_scorer.scoring.base import FunctionScorer, Scorer, ScoreRequest, as_scorer, check_score

__all__ = ["FunctionScorer", "ScoreRequest", "Scorer", "as_scorer", "check_score"]
