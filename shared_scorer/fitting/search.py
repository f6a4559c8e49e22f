"""Exact, vectorised search of cascade chains and thresholds over recorded (score, correct, cost) tables.

Semantics are those of :class:`~shared_scorer.cascade.Cascade`: stage ``l`` answers when its score is
``>= thresholds[l]``, the last stage always answers, and a query pays for every stage it called.

How it is exact without a loop over queries. For a model ``m`` with sorted candidate thresholds
``T_m[0] < ... < T_m[G-1]``, let ``P[i, m]`` be the number of candidates ``<= s[i, m]``; then query ``i``
escalates past ``m`` under threshold ``T_m[j]`` iff ``P[i, m] <= j``. For a chain ``m_1 .. m_L``::

    correct(t) = sum_i c[i, m_1] + sum_{l=2..L} sum_i [P[i, m_1] <= j_1] ... [P[i, m_{l-1}] <= j_{l-1}]
                                                  * (c[i, m_l] - c[i, m_{l-1}])
    cost(t)    = sum_{l=1..L} sum_i [same reach indicator] * k[i, m_l]

Each inner sum, over *every* threshold combination at once, is a weighted histogram of the queries'
joint bins ``(P[i, m_1], .., P[i, m_{l-1}])`` followed by a cumulative sum along each axis. Chains are
enumerated depth-first so a prefix's arrays are reused by all its extensions. The result is the same
optimum as trying every combination of the same candidate thresholds one by one (a test checks this
against brute force), in ``O(n + prod(G))`` per chain instead of ``O(n * prod(G))``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.frontier import pareto_mask
from shared_scorer.strategy import Frontier, FrontierPoint

CandidateMode = Literal["grid", "quantiles", "both"]
GRID_POINTS = 40
"""FrugalGPT's reference search tries this many evenly spaced thresholds per stage."""
MAX_QUANTILES = 64


def reference_grid(points: int = GRID_POINTS) -> np.ndarray:
    """The reference grid: ``points`` evenly spaced thresholds on [0, 1] (both ends included)."""
    if points < 2:
        raise ConfigurationError(f"a threshold grid needs at least 2 points, got {points}")
    return np.linspace(0.0, 1.0, points)


def candidate_thresholds(
    scores: np.ndarray,
    mode: CandidateMode = "both",
    grid_points: int = GRID_POINTS,
    max_quantiles: int = MAX_QUANTILES,
) -> np.ndarray:
    """Sorted distinct thresholds to try for one model, always including 0 (accept every answer).

    ``grid``: the reference grid. ``quantiles``: the model's distinct score values, or, when there are
    more than ``max_quantiles``, the score values at ``max_quantiles`` evenly spaced ranks. ``both``: the union.

    >>> candidate_thresholds(np.array([0.2, 0.9, 0.9]), mode="quantiles").tolist()
    [0.0, 0.2, 0.9]
    """
    values = [np.zeros(1)]
    if mode in ("grid", "both"):
        values.append(reference_grid(grid_points))
    if mode in ("quantiles", "both"):
        distinct = np.unique(np.asarray(scores, dtype=float))
        if len(distinct) > max_quantiles:
            ordered = np.sort(np.asarray(scores, dtype=float))
            ranks = np.linspace(0, len(ordered) - 1, max_quantiles).round().astype(np.int64)
            distinct = np.unique(ordered[ranks])
        values.append(distinct)
    if mode not in ("grid", "quantiles", "both"):
        raise ConfigurationError(f"candidate thresholds must be 'grid', 'quantiles' or 'both', got {mode!r}")
    return np.unique(np.clip(np.concatenate(values), 0.0, 1.0))


@dataclass(frozen=True)
class Table:
    """Per query ``i`` and model ``m``: score ``s[i, m]``, correctness ``c[i, m]``, cost ``k[i, m]``."""

    models: tuple[str, ...]
    scores: np.ndarray
    correct: np.ndarray
    costs: np.ndarray
    valid: np.ndarray | None = None
    """``valid[i, m]`` False: the answer is unusable (e.g. cut at an output cap); it always escalates, and
    at the last stage it counts as wrong. ``None``: every answer is usable."""
    base: tuple[str, ...] | None = None
    """The provider model behind each column (``model@cap`` columns share their model's); a chain never
    calls one provider model twice. ``None``: every column is its own model."""
    after: np.ndarray | None = None
    """``after[i, p, m]``: column ``m``'s score when the stage before it was column ``p`` (its signals then
    include the agreement of the two answers); ``None``: ``scores`` at every position."""
    first_only: frozenset[int] = frozenset()
    """Columns that may only start a chain (a router's gated first stage)."""

    @classmethod
    def of(
        cls,
        models: Sequence[str],
        scores: np.ndarray,
        correct: np.ndarray,
        costs: np.ndarray,
        valid: np.ndarray | None = None,
        base: Sequence[str] | None = None,
        after: np.ndarray | None = None,
        first_only: Sequence[int] = (),
    ) -> Table:
        """Validate shapes and ranges; a bad table is a :class:`DataError` naming the array."""
        arrays = {}
        named = [("scores", scores), ("correct", correct), ("costs", costs)]
        if valid is not None:
            named.append(("valid", valid))
        for name, value in named:
            array = np.asarray(value, dtype=float)
            if array.ndim != 2 or array.shape[1] != len(models):
                raise DataError(f"{name} must have shape (queries, {len(models)}), got {array.shape}")
            if not np.isfinite(array).all():
                raise DataError(f"{name} holds NaN or infinite values")
            arrays[name] = array
        if not arrays["scores"].shape == arrays["correct"].shape == arrays["costs"].shape:
            raise DataError("scores, correct and costs must have the same shape")
        if arrays["scores"].shape[0] == 0:
            raise DataError("no queries to search over")
        if len(set(models)) != len(models):
            raise DataError(f"model names must be distinct, got {list(models)}")
        s = arrays["scores"]
        if (s < 0).any() or (s > 1).any():
            raise DataError("scores must lie in [0, 1]")
        if (arrays["costs"] < 0).any():
            raise DataError("costs must be >= 0")
        if base is not None and len(base) != len(models):
            raise DataError(f"base must name one model per column ({len(models)}), got {len(base)}")
        mask = None if valid is None else arrays["valid"].astype(bool)
        if mask is not None and (arrays["correct"][~mask] != 0).any():
            raise DataError("an invalid answer cannot be correct (correct must be 0 where valid is False)")
        conditional = None
        if after is not None:
            conditional = np.asarray(after, dtype=float)
            n, k = s.shape
            if conditional.shape != (n, k, k):
                raise DataError(f"after must have shape ({n}, {k}, {k}), got {conditional.shape}")
            if not np.isfinite(conditional).all() or (conditional < 0).any() or (conditional > 1).any():
                raise DataError("after must hold finite scores in [0, 1]")
        return cls(
            tuple(models),
            s,
            arrays["correct"],
            arrays["costs"],
            mask,
            None if base is None else tuple(base),
            conditional,
            frozenset(int(j) for j in first_only),
        )

    def score_after(self, previous: int | None, m: int) -> np.ndarray:
        """Column ``m``'s scores when column ``previous`` came before it (``None``: it starts the chain)."""
        if previous is None or self.after is None:
            return self.scores[:, m]
        return self.after[:, previous, m]

    def usable(self, m: int) -> np.ndarray:
        """Which queries have a usable answer from column ``m``."""
        return np.ones(self.n, dtype=bool) if self.valid is None else self.valid[:, m]

    def same_model(self, a: int, b: int) -> bool:
        return a == b or (self.base is not None and self.base[a] == self.base[b])

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    def index(self, chain: Sequence[str]) -> list[int]:
        where = {m: i for i, m in enumerate(self.models)}
        missing = [m for m in chain if m not in where]
        if missing:
            raise ConfigurationError(f"models {missing} are not in the table (it has {list(self.models)})")
        return [where[m] for m in chain]


@dataclass(frozen=True)
class ChainFigures:
    """What one chain with fixed thresholds achieves on a table (means over queries)."""

    accuracy: float
    cost: float
    reach: tuple[float, ...]


def evaluate_chain(table: Table, chain: Sequence[str], thresholds: Sequence[float]) -> ChainFigures:
    """Accuracy, mean cost and per-stage reach of one cascade, exactly as :class:`Cascade` would run it.

    >>> t = Table.of(["a", "b"], np.array([[0.9, 0.5], [0.1, 0.5]]), np.array([[1, 1], [0, 1]]),
    ...              np.array([[1, 10], [1, 10]]))
    >>> evaluate_chain(t, ["a", "b"], [0.5])
    ChainFigures(accuracy=1.0, cost=6.0, reach=(1.0, 0.5))
    """
    idx = table.index(chain)
    if len(thresholds) != len(idx) - 1:
        raise ConfigurationError(f"{len(idx)} stages need {len(idx) - 1} thresholds, got {len(thresholds)}")
    active = np.ones(table.n, dtype=bool)
    correct = cost = 0.0
    reach = []
    for level, m in enumerate(idx):
        reach.append(float(active.mean()))
        cost += float(table.costs[active, m].sum())
        last = level == len(idx) - 1
        scores = table.score_after(idx[level - 1] if level else None, m)
        accept = active if last else active & table.usable(m) & (scores >= thresholds[level])
        correct += float(table.correct[accept, m].sum())
        active &= ~accept
    return ChainFigures(correct / table.n, cost / table.n, tuple(reach))


@dataclass
class _Found:
    chains: list[tuple[int, ...]]
    chain_id: list[np.ndarray]
    cell: list[np.ndarray]
    correct: list[np.ndarray]
    cost: list[np.ndarray]

    def add(self, chain: tuple[int, ...], correct: np.ndarray, cost: np.ndarray) -> None:
        flat_correct, flat_cost = correct.ravel(), cost.ravel()
        keep = pareto_mask(flat_cost, flat_correct)
        self.chain_id.append(np.full(len(keep), len(self.chains), dtype=np.int64))
        self.chains.append(chain)
        self.cell.append(keep)
        self.correct.append(flat_correct[keep])
        self.cost.append(flat_cost[keep])


def search(
    table: Table,
    *,
    max_depth: int = 3,
    candidates: CandidateMode | Sequence[np.ndarray] = "both",
    grid_points: int = GRID_POINTS,
    max_quantiles: int = MAX_QUANTILES,
    max_cells: int = 4_000_000,
) -> Frontier:
    """The cost-accuracy Pareto frontier over every ordered chain of 1..``max_depth`` distinct models.

    ``candidates`` is a mode of :func:`candidate_thresholds` or one array of thresholds per model (in
    ``table.models`` order). Each frontier point's accuracy and cost are re-measured by
    :func:`evaluate_chain`, which also gives its per-stage reach.

    >>> t = Table.of(["a", "b"], np.array([[0.9, 0.5], [0.1, 0.5]]), np.array([[1, 1], [0, 1]]),
    ...              np.array([[1, 10], [1, 10]]))
    >>> [(p.chain, p.thresholds, p.accuracy, p.cost) for p in search(t, candidates="quantiles")]
    [(('a',), (), 0.5, 1.0), (('a', 'b'), (0.9,), 1.0, 6.0)]
    """
    n_models = len(table.models)
    if max_depth < 1:
        raise ConfigurationError(f"max_depth must be >= 1, got {max_depth}")
    max_depth = min(max_depth, n_models)
    if isinstance(candidates, str):
        cands = [
            candidate_thresholds(_all_scores(table, m), candidates, grid_points, max_quantiles) for m in range(n_models)
        ]
    else:
        if len(candidates) != n_models:
            raise ConfigurationError(f"need one candidate array per model ({n_models}), got {len(candidates)}")
        cands = [np.unique(np.asarray(c, dtype=float)) for c in candidates]
        if any(len(c) == 0 or c.min() < 0 or c.max() > 1 for c in cands):
            raise ConfigurationError("candidate thresholds must be non-empty and lie in [0, 1]")
    sizes = [len(c) for c in cands]
    # an unusable answer sits in bin 0: it escalates under every threshold
    binned: dict[tuple[int | None, int], np.ndarray] = {}

    def bins(previous: int | None, m: int) -> np.ndarray:
        key = (previous if table.after is not None else None, m)
        if key not in binned:
            scores = table.score_after(key[0], m)
            binned[key] = np.where(table.usable(m), np.searchsorted(cands[m], scores, side="right"), 0).astype(np.int64)
        return binned[key]

    total_correct = table.correct.sum(axis=0)
    total_cost = table.costs.sum(axis=0)
    found = _Found([], [], [], [], [])

    def extend(
        chain: tuple[int, ...], flat: np.ndarray, dims: tuple[int, ...], correct: np.ndarray, cost: np.ndarray
    ) -> None:
        last = chain[-1]
        cells = int(np.prod(dims))
        if cells > max_cells:
            raise ConfigurationError(
                f"{cells} threshold cells for a chain of {len(chain) + 1} stages exceed max_cells={max_cells}; "
                "use fewer candidate thresholds or a smaller max_depth"
            )
        window = tuple(slice(0, d - 1) for d in dims)
        for m in range(n_models):
            if m in table.first_only or any(table.same_model(m, c) for c in chain):
                continue
            new_correct = correct[..., None] + _reach_sums(
                flat, dims, table.correct[:, m] - table.correct[:, last], window
            )
            new_cost = cost[..., None] + _reach_sums(flat, dims, table.costs[:, m], window)
            found.add((*chain, m), new_correct, new_cost)
            if len(chain) + 1 < max_depth:
                extend((*chain, m), flat * (sizes[m] + 1) + bins(last, m), (*dims, sizes[m] + 1), new_correct, new_cost)

    for m in range(n_models):
        if m not in table.first_only:  # a gated stage alone is not a cascade: its skipped queries get no answer
            found.add((m,), np.asarray(total_correct[m]), np.asarray(total_cost[m]))
        if max_depth > 1:
            extend((m,), bins(None, m), (sizes[m] + 1,), np.asarray(total_correct[m]), np.asarray(total_cost[m]))

    correct_all = np.concatenate(found.correct)
    cost_all = np.concatenate(found.cost)
    chain_all = np.concatenate(found.chain_id)
    cell_all = np.concatenate(found.cell)
    points = []
    for k in pareto_mask(cost_all, correct_all):
        chain = found.chains[int(chain_all[k])]
        shape = tuple(sizes[m] for m in chain[:-1])
        where = np.unravel_index(int(cell_all[k]), shape) if shape else ()
        names = tuple(table.models[m] for m in chain)
        thresholds = tuple(float(cands[m][j]) for m, j in zip(chain[:-1], where, strict=True))
        figures = evaluate_chain(table, names, thresholds)
        points.append(FrontierPoint(names, thresholds, figures.accuracy, figures.cost, figures.reach))
    return Frontier(points)


def _all_scores(table: Table, m: int) -> np.ndarray:
    """Every score column ``m`` can have, at any position, where its answer is usable."""
    usable = table.usable(m)
    if table.after is None:
        return table.scores[usable, m]
    return np.concatenate([table.scores[usable, m], table.after[usable][:, :, m].ravel()])


def _reach_sums(flat: np.ndarray, dims: tuple[int, ...], weights: np.ndarray, window: tuple[slice, ...]) -> np.ndarray:
    """For every threshold cell ``j``: the sum of ``weights`` over queries with ``bins <= j`` on every axis."""
    hist = np.bincount(flat, weights=weights, minlength=int(np.prod(dims))).reshape(dims)
    for axis in range(len(dims)):
        hist = np.cumsum(hist, axis=axis)
    return hist[window]


def brute_force_points(
    table: Table, max_depth: int, candidates: Sequence[np.ndarray]
) -> list[tuple[tuple[str, ...], tuple[float, ...], float, float]]:
    """Every (chain, thresholds, accuracy, cost), one combination at a time: the slow reference, for tests."""
    out = []
    for depth in range(1, min(max_depth, len(table.models)) + 1):
        for chain in itertools.permutations(range(len(table.models)), depth):
            if any(table.same_model(a, b) for a, b in itertools.combinations(chain, 2)):
                continue
            if any(m in table.first_only for m in chain[1:]) or (depth == 1 and chain[0] in table.first_only):
                continue
            grids = [np.unique(np.asarray(candidates[m], dtype=float)) for m in chain[:-1]]
            for thresholds in itertools.product(*grids):
                names = tuple(table.models[m] for m in chain)
                correct = cost = 0.0
                for i in range(table.n):
                    for level, m in enumerate(chain):
                        cost += table.costs[i, m]
                        usable = table.valid is None or table.valid[i, m]
                        score = table.score_after(chain[level - 1] if level else None, m)[i]
                        if level == depth - 1 or (usable and score >= thresholds[level]):
                            correct += table.correct[i, m]
                            break
                out.append((names, tuple(float(t) for t in thresholds), correct / table.n, cost / table.n))
    return out
