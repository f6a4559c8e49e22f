"""The cost-accuracy frontier's numeric side: the Pareto mask of many points at once, and merging frontiers.

The :class:`~shared_scorer.strategy.Frontier` and :class:`~shared_scorer.strategy.FrontierPoint` a strategy
carries live in :mod:`shared_scorer.strategy` (the request path reads them without numpy).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from shared_scorer.strategy import EPS, Frontier


def pareto_mask(costs: np.ndarray, accuracies: np.ndarray) -> np.ndarray:
    """Indices of the Pareto-optimal points, cheapest first: each strictly more accurate than every cheaper one.

    Among points of equal cost only the most accurate is kept, and among exact ties the first given.

    >>> pareto_mask(np.array([1.0, 2.0, 2.0, 3.0]), np.array([0.5, 0.4, 0.7, 0.7])).tolist()
    [0, 2]
    """
    costs = np.asarray(costs, dtype=float)
    accuracies = np.asarray(accuracies, dtype=float)
    if costs.size == 0:
        return np.zeros(0, dtype=np.int64)
    # cost ascending, then accuracy descending, then original position (stable)
    order = np.lexsort((np.arange(costs.size), -accuracies, costs))
    acc = accuracies[order]
    best_before = np.maximum.accumulate(np.concatenate(([-np.inf], acc[:-1])))
    keep = acc > best_before + EPS
    return order[keep]


def merge(frontiers: Iterable[Frontier]) -> Frontier:
    """The Pareto frontier of the union of several frontiers."""
    return Frontier([p for f in frontiers for p in f.points])
