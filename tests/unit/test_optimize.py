"""The vectorised search against brute force, and exact figures on a hand-made instance."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from shared_scorer.cascade import Cascade
from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.frontier import pareto_mask
from shared_scorer.fitting.search import (
    Table,
    brute_force_points,
    candidate_thresholds,
    evaluate_chain,
    reference_grid,
    search,
)
from shared_scorer.outcome import StageOutput
from shared_scorer.strategy import Frontier, FrontierPoint


def random_table(seed: int, n: int, models: int, levels: int = 6) -> Table:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(n, models)) / (levels - 1)
    correct = (rng.random((n, models)) < 0.3 + 0.6 * scores).astype(float)
    base = rng.integers(1, 20, size=models)
    costs = base[None, :] * rng.integers(1, 4, size=(n, models))  # integers: float sums are exact
    return Table.of([f"m{j}" for j in range(models)], scores, correct, costs.astype(float))


def brute_frontier(table: Table, depth: int, candidates: list[np.ndarray]) -> list[float]:
    """The brute-force Pareto frontier as a flat [cost, accuracy, cost, accuracy, ...] list."""
    points = brute_force_points(table, depth, candidates)
    costs = np.array([p[3] for p in points])
    accs = np.array([p[2] for p in points])
    return [float(v) for i in pareto_mask(costs, accs) for v in (costs[i], accs[i])]


def flat(frontier: Frontier) -> list[float]:
    return [v for p in frontier for v in (p.cost, p.accuracy)]


@pytest.mark.parametrize("seed", range(12))
def test_search_equals_brute_force_on_the_same_candidates(seed: int) -> None:
    table = random_table(seed, n=9 + seed, models=3 + seed % 2)
    candidates = [candidate_thresholds(table.scores[:, m], "quantiles") for m in range(len(table.models))]
    frontier = search(table, max_depth=3, candidates=candidates)
    expected = brute_frontier(table, 3, candidates)
    assert flat(frontier) == pytest.approx(expected, abs=1e-12)
    # every returned point is what brute force measures for that very chain and those thresholds
    brute = {(p[0], p[1]): (p[2], p[3]) for p in brute_force_points(table, 3, candidates)}
    for point in frontier:
        assert brute[(point.chain, point.thresholds)] == pytest.approx((point.accuracy, point.cost), abs=1e-12)
    # and the optimum under any budget is the same
    for budget in np.linspace(0, table.costs.sum(axis=1).max(), 15):
        fits = [acc for _, _, acc, cost in brute_force_points(table, 3, candidates) if cost <= budget]
        if fits:
            assert frontier.select(budget=float(budget)).accuracy == pytest.approx(max(fits), abs=1e-12)
        else:
            with pytest.raises(ConfigurationError, match="cheapest costs"):
                frontier.select(budget=float(budget))


@pytest.mark.parametrize("seed", range(8))
def test_capped_columns_equal_brute_force(seed: int) -> None:
    """Columns with unusable answers (cut at an output cap) and columns sharing a provider model."""
    plain = random_table(seed, n=10 + seed, models=4)
    rng = np.random.default_rng(100 + seed)
    valid = rng.random(plain.scores.shape) < 0.7
    base = ["a", "a", "b", "c"]  # m0 and m1 are one model at two caps: never both in a chain
    table = Table.of(plain.models, plain.scores, plain.correct * valid, plain.costs, valid=valid, base=base)
    candidates = [candidate_thresholds(table.scores[:, m], "quantiles") for m in range(4)]
    frontier = search(table, max_depth=3, candidates=candidates)
    assert flat(frontier) == pytest.approx(brute_frontier(table, 3, candidates), abs=1e-12)
    assert not any({"m0", "m1"} <= set(p.chain) for p in frontier)
    brute = {(p[0], p[1]): (p[2], p[3]) for p in brute_force_points(table, 3, candidates)}
    for point in frontier:
        assert brute[(point.chain, point.thresholds)] == pytest.approx((point.accuracy, point.cost), abs=1e-12)
    with pytest.raises(DataError, match="invalid answer cannot be correct"):
        Table.of(plain.models, plain.scores, plain.correct, plain.costs, valid=valid)


@pytest.mark.parametrize("seed", range(4))
def test_search_equals_brute_force_on_the_reference_grid(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n, models = 10, 3
    table = Table.of(
        ["a", "b", "c"],
        rng.random((n, models)),
        rng.random((n, models)),  # soft correctness
        rng.random((n, models)) * [1, 5, 30],
    )
    grid = [candidate_thresholds(table.scores[:, m], "grid", grid_points=8) for m in range(models)]
    frontier = search(table, max_depth=3, candidates="grid", grid_points=8)
    assert flat(frontier) == pytest.approx(brute_frontier(table, 3, grid), abs=1e-9)


def test_depth_four_equals_brute_force() -> None:
    table = random_table(7, n=8, models=4, levels=4)
    candidates = [candidate_thresholds(table.scores[:, m], "quantiles") for m in range(4)]
    frontier = search(table, max_depth=4, candidates=candidates)
    assert flat(frontier) == pytest.approx(brute_frontier(table, 4, candidates), abs=1e-12)


def hand_made() -> Table:
    # 4 queries; cheap model "s" (cost 1), mid "m" (cost 3), big "b" (cost 10)
    scores = np.array([[0.9, 0.8, 0.5], [0.2, 0.9, 0.5], [0.1, 0.3, 0.5], [0.6, 0.1, 0.5]])
    correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)
    costs = np.array([[1, 3, 10]] * 4, dtype=float)
    return Table.of(["s", "m", "b"], scores, correct, costs)


def test_hand_made_instance_exact_figures_match_the_cascade() -> None:
    table = hand_made()
    figures = evaluate_chain(table, ["s", "m", "b"], [0.5, 0.5])
    # q0: s accepts (right); q1: s rejects, m accepts (right); q2: s, m reject, b answers (right);
    # q3: s accepts (wrong). Costs: 1 + 4 + 14 + 1 = 20 -> 5 per query.
    assert (figures.accuracy, figures.cost, figures.reach) == (0.75, 5.0, (1.0, 0.5, 0.25))

    # the same through the one cascade loop
    lookup = {(f"q{i}", m): float(table.scores[i, j]) for i in range(4) for j, m in enumerate(table.models)}
    cascade = Cascade(
        ["s", "m", "b"],
        [0.5, 0.5],
        scorer=lambda request: lookup[(request.query, request.model)],
        prices={"s": (1_000_000, 0), "m": (3_000_000, 0), "b": (10_000_000, 0)},
    )
    total, right = Decimal(0), 0.0
    for i in range(4):
        result = cascade.run(f"q{i}", [lambda: StageOutput("x", 1, 0)] * 3)
        total += result.cost_usd
        right += table.correct[i, result.answer_stage or 0]
    assert (right / 4, total / 4) == (0.75, Decimal(5))

    frontier = search(table, max_depth=3, candidates="quantiles")
    best = frontier.select(target_accuracy=0.75)
    # nothing cheaper reaches 3 of 4: s -> b costs 6, m -> b needs t >= 0.8 and costs 8
    assert (best.accuracy, best.cost) == (0.75, 5.0)
    assert best.chain == ("s", "m", "b") and best.thresholds == (0.6, 0.8)
    assert frontier.select(budget=1.0).chain == ("s",)
    assert frontier.select().accuracy == 0.75
    with pytest.raises(ConfigurationError, match=r"most accurate reaches 0\.75"):
        frontier.select(target_accuracy=0.8)
    with pytest.raises(ConfigurationError, match="not both"):
        frontier.select(budget=1.0, target_accuracy=0.5)


def test_frontier_is_pareto_and_round_trips() -> None:
    frontier = search(random_table(3, n=40, models=4), max_depth=3)
    costs = [p.cost for p in frontier]
    accs = [p.accuracy for p in frontier]
    assert costs == sorted(costs) and accs == sorted(accs) and len(set(accs)) == len(accs)
    assert Frontier.from_json(frontier.to_json()).points == frontier.points
    with pytest.raises(ValueError, match="thresholds"):
        FrontierPoint.from_json({"chain": ["a", "b"], "thresholds": [], "accuracy": 1, "cost_per_query": 1})


def test_candidates_and_bad_tables() -> None:
    assert reference_grid().shape == (40,)
    many = np.linspace(0, 1, 1000)
    assert len(candidate_thresholds(many, "quantiles", max_quantiles=64)) <= 65
    assert len(candidate_thresholds(many, "both")) <= 40 + 65
    with pytest.raises(DataError, match="scores must lie"):
        Table.of(["a"], np.array([[1.5]]), np.array([[1.0]]), np.array([[1.0]]))
    with pytest.raises(DataError, match=r"shape \(queries, 2\)"):
        Table.of(["a", "b"], np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(ConfigurationError, match="not in the table"):
        evaluate_chain(hand_made(), ["s", "zz"], [0.5])


def test_bench_headline_exact_figures() -> None:
    from shared_scorer.fitting.bench import headline

    best = {"model": "big", "accuracy": 0.70, "cost_per_query": 0.10}
    frontier = [
        {"accuracy": 0.50, "cost_per_query": 0.005},
        {"accuracy": 0.62, "cost_per_query": 0.015},
        {"accuracy": 0.66, "cost_per_query": 0.04},
        {"accuracy": 0.71, "cost_per_query": 0.06},
        {"accuracy": 0.74, "cost_per_query": 0.20},
    ]
    h = headline(frontier, best)
    assert h["savings_at_matched_accuracy"] == pytest.approx(1 - 0.06 / 0.10)
    assert h["accuracy_gain_at_equal_cost"] == pytest.approx(0.71 - 0.70)
    assert h["accuracy_at_cost_fraction"] == {"0.1": 0.50, "0.2": 0.62, "0.5": 0.66}
    never = headline(frontier[:3], best)
    assert never["savings_at_matched_accuracy"] is None
    assert never["accuracy_gain_at_equal_cost"] == pytest.approx(0.66 - 0.70)
