"""Learn which models to chain, in which order, with which thresholds, from recorded data.

:func:`search` returns the whole cost-accuracy :class:`Frontier`; :meth:`Frontier.select` picks a point
by budget or accuracy target.
"""

from shared_scorer.optimize.frontier import Frontier, FrontierPoint, merge, pareto_mask
from shared_scorer.optimize.search import (
    GRID_POINTS,
    ChainFigures,
    Table,
    brute_force_points,
    candidate_thresholds,
    evaluate_chain,
    reference_grid,
    search,
)

__all__ = [
    "GRID_POINTS",
    "ChainFigures",
    "Frontier",
    "FrontierPoint",
    "Table",
    "brute_force_points",
    "candidate_thresholds",
    "evaluate_chain",
    "merge",
    "pareto_mask",
    "reference_grid",
    "search",
]
