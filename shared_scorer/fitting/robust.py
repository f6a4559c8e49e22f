"""Choosing an operating point that holds across folds, not the single best in-sample point.

Traffic drifts from the data a cascade was fitted on (MedMCQA's test split is much harder than its
train split). A point picked as "most accurate within the budget" on the whole fitting table sits on
thresholds tuned to that table's mix of easy and hard queries; when the mix changes, its cost and its
accuracy move. :func:`robust_select` measures every frontier point on each cross-fitting fold separately
and keeps the point whose *worst* fold is best: among points whose cost stays within the budget on every
fold, the highest worst-fold accuracy (then the highest mean, then the cheapest). Every single model is a
candidate too, frontier or not: on little data a cascade that looked better in sample must also be better on
every fold than the best single model the budget affords, else that model is deployed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.search import Table, evaluate_chain
from shared_scorer.strategy import Frontier, FrontierPoint


def subset(table: Table, rows: np.ndarray) -> Table:
    """The table restricted to some queries (a boolean mask or indices)."""
    return Table(
        table.models,
        table.scores[rows],
        table.correct[rows],
        table.costs[rows],
        None if table.valid is None else table.valid[rows],
        table.base,
        None if table.after is None else table.after[rows],
        table.first_only,
    )


@dataclass(frozen=True)
class FoldFigures:
    """One point's accuracy and cost on each fold."""

    accuracy: tuple[float, ...]
    cost: tuple[float, ...]


def fold_figures(table: Table, point: FrontierPoint, groups: np.ndarray) -> FoldFigures:
    accs, costs = [], []
    for g in np.unique(groups):
        figures = evaluate_chain(subset(table, groups == g), point.chain, point.thresholds)
        accs.append(figures.accuracy)
        costs.append(figures.cost)
    return FoldFigures(tuple(accs), tuple(costs))


def single_points(table: Table) -> list[FrontierPoint]:
    """Every column alone (router-gated ones aside): a cascade must beat the best single model it can afford
    on every fold to be deployed instead of it, which matters most on little data."""
    out = []
    for m, name in enumerate(table.models):
        if m in table.first_only:
            continue
        figures = evaluate_chain(table, [name], [])
        out.append(FrontierPoint((name,), (), figures.accuracy, figures.cost, figures.reach))
    return out


def robust_select(frontier: Frontier, table: Table, groups: Sequence[int] | np.ndarray, budget: float) -> FrontierPoint:
    """The frontier point that best holds across folds within ``budget`` (see the module docstring); when no
    point stays within budget on every fold, :meth:`Frontier.select`'s choice.

    >>> t = Table.of(["a", "b"], np.array([[0.9, 0.5], [0.1, 0.5]] * 2), np.array([[1, 1], [0, 1]] * 2),
    ...              np.array([[1, 10], [1, 10]] * 2))
    >>> f = Frontier([FrontierPoint(("a",), (), 0.5, 1.0), FrontierPoint(("a", "b"), (0.5,), 1.0, 6.0)])
    >>> robust_select(f, t, np.array([0, 0, 1, 1]), budget=6.0).chain
    ('a', 'b')
    """
    groups = np.asarray(groups)
    if len(groups) != table.n:
        raise ConfigurationError(f"groups has {len(groups)} entries for a table of {table.n} queries")
    best: tuple[tuple[float, float, float], FrontierPoint] | None = None
    for point in [*frontier, *single_points(table)]:
        if point.cost > budget + 1e-15:
            continue
        figures = fold_figures(table, point, groups)
        if max(figures.cost) > budget + 1e-15:
            continue
        key = (min(figures.accuracy), float(np.mean(figures.accuracy)), -point.cost)
        if best is None or key > best[0]:
            best = (key, point)
    return best[1] if best is not None else frontier.select(budget=budget)
