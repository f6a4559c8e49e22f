"""The cost-accuracy frontier: Pareto points (chain, thresholds, accuracy, mean cost) and objective selection."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared_scorer.errors import ConfigurationError

EPS = 1e-12
"""Accuracy or cost differences below this are ties (they come from summing floats in another order)."""


@dataclass(frozen=True)
class FrontierPoint:
    """One cascade configuration and what it achieved on the data it was measured on.

    ``reach[l]`` is the share of queries that called stage ``l`` (``reach[0] == 1``); ``1 - reach[l+1]/reach[l]``
    is the acceptance rate of stage ``l``.

    >>> p = FrontierPoint(("small", "big"), (0.7,), accuracy=0.8, cost=0.002)
    >>> FrontierPoint.from_json(p.to_json()) == p
    True
    """

    chain: tuple[str, ...]
    thresholds: tuple[float, ...]
    accuracy: float
    cost: float
    reach: tuple[float, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": list(self.chain),
            "thresholds": list(self.thresholds),
            "accuracy": self.accuracy,
            "cost_per_query": self.cost,
            "reach": list(self.reach),
        }

    @classmethod
    def from_json(cls, data: Any) -> FrontierPoint:
        """Parse :meth:`to_json` output; a malformed point is a ``ValueError`` naming the field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a frontier point must be an object, got {type(data).__name__}")
        chain = data.get("chain")
        if not isinstance(chain, list) or not chain or not all(isinstance(m, str) for m in chain):
            raise ValueError("field 'chain' must be a non-empty list of model names")
        thresholds = data.get("thresholds")
        if not isinstance(thresholds, list) or len(thresholds) != len(chain) - 1:
            raise ValueError(f"field 'thresholds' must be a list of {len(chain) - 1} numbers")
        numbers = {}
        for name in ("accuracy", "cost_per_query"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"field {name!r} must be a finite number, got {value!r}")
            numbers[name] = float(value)
        for t in thresholds:
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
                raise ValueError(f"field 'thresholds' must hold numbers in [0, 1], got {t!r}")
        reach = data.get("reach", [])
        if not isinstance(reach, list) or not all(isinstance(r, int | float) for r in reach):
            raise ValueError("field 'reach' must be a list of numbers")
        return cls(
            tuple(chain),
            tuple(float(t) for t in thresholds),
            numbers["accuracy"],
            numbers["cost_per_query"],
            tuple(float(r) for r in reach),
        )


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


@dataclass
class Frontier:
    """Pareto-optimal cascades, cheapest first, with objective selection.

    >>> f = Frontier([FrontierPoint(("a",), (), 0.6, 1.0), FrontierPoint(("a", "b"), (0.5,), 0.7, 2.0)])
    >>> f.select(budget=1.5).chain, f.select(target_accuracy=0.65).chain
    (('a',), ('a', 'b'))
    """

    points: list[FrontierPoint]

    def __post_init__(self) -> None:
        if self.points:
            index = pareto_mask(np.array([p.cost for p in self.points]), np.array([p.accuracy for p in self.points]))
            self.points = [self.points[i] for i in index]

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Any:
        return iter(self.points)

    def best_within(self, budget: float) -> FrontierPoint:
        """The most accurate point whose mean cost per query is at most ``budget``."""
        fits = [p for p in self.points if p.cost <= budget + EPS * max(1.0, abs(budget))]
        if not fits:
            cheapest = self.points[0].cost if self.points else math.nan
            raise ConfigurationError(
                f"no cascade costs at most {budget:.6g} per query; the cheapest costs {cheapest:.6g}"
            )
        return fits[-1]

    def cheapest_reaching(self, target_accuracy: float) -> FrontierPoint:
        """The cheapest point whose accuracy is at least ``target_accuracy``."""
        for point in self.points:
            if point.accuracy >= target_accuracy - EPS:
                return point
        best = self.points[-1].accuracy if self.points else math.nan
        raise ConfigurationError(
            f"no cascade reaches accuracy {target_accuracy:.4g}; the most accurate reaches {best:.4g}"
        )

    def select(self, budget: float | None = None, target_accuracy: float | None = None) -> FrontierPoint:
        """Exactly one objective: highest accuracy within ``budget``, or lowest cost reaching ``target_accuracy``.

        With neither, the most accurate point.
        """
        if budget is not None and target_accuracy is not None:
            raise ConfigurationError("give a budget or a target accuracy, not both")
        if not self.points:
            raise ConfigurationError("the frontier is empty")
        if budget is not None:
            return self.best_within(budget)
        if target_accuracy is not None:
            return self.cheapest_reaching(target_accuracy)
        return self.points[-1]

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.points]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Frontier:
        return cls([FrontierPoint.from_json(p) for p in data])


def merge(frontiers: Iterable[Frontier]) -> Frontier:
    """The Pareto frontier of the union of several frontiers."""
    return Frontier([p for f in frontiers for p in f.points])
