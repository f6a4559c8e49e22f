"""Time the exact chain and threshold search on synthetic data; prints JSON.

    python benchmarks/optimizer.py [--models 10] [--depth 3] [--queries 10000] [--candidates both]

Synthetic data: model ``m`` answers correctly with a probability that grows with its price; its score is
a noisy calibrated-looking signal of correctness. Scorer training is not part of this benchmark. For
comparison, the reference search (a Python loop over queries for each threshold combination of a
40-point grid) is timed on a few combinations and extrapolated to all of them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._machine import machine  # noqa: E402
from shared_scorer.fitting.search import Table, search  # noqa: E402


def synthetic(models: int, queries: int, seed: int) -> Table:
    rng = np.random.default_rng(seed)
    price = np.geomspace(0.0005, 0.1, models)
    skill = np.linspace(0.2, 0.75, models)
    difficulty = rng.random(queries)
    p = 1 / (1 + np.exp(-(8 * (skill[None, :] - difficulty[:, None]))))
    correct = (rng.random((queries, models)) < p).astype(float)
    noise = rng.normal(0, 1.0, (queries, models))
    scores = 1 / (1 + np.exp(-(2.5 * (correct - 0.5) * 2 + noise)))
    scores = np.round(scores, 3)
    costs = price[None, :] * rng.lognormal(0, 0.3, (queries, models))
    return Table.of([f"model-{i}" for i in range(models)], scores, correct, costs)


def reference_seconds_per_combination(table: Table, chain: tuple[int, ...], combos: int = 3) -> float:
    grid = np.linspace(0, 1, 40)
    started = time.perf_counter()
    for thresholds in itertools.islice(itertools.product(grid, repeat=len(chain) - 1), combos):
        correct = cost = 0.0
        for i in range(table.n):
            for level, m in enumerate(chain):
                cost += table.costs[i, m]
                if level == len(chain) - 1 or table.scores[i, m] >= thresholds[level]:
                    correct += table.correct[i, m]
                    break
    return (time.perf_counter() - started) / combos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--candidates", default="both", choices=("grid", "quantiles", "both"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    table = synthetic(args.models, args.queries, args.seed)
    runs = {}
    for mode in dict.fromkeys([args.candidates, "grid"]):
        started = time.perf_counter()
        frontier = search(table, max_depth=args.depth, candidates=mode)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        best = frontier.select()
        runs[mode] = {
            "fit_seconds": round(seconds, 3),
            "frontier_points": len(frontier),
            "most_accurate": {"chain": list(best.chain), "accuracy": round(best.accuracy, 4)},
        }
    chains = {d: len(list(itertools.permutations(range(args.models), d))) for d in range(1, args.depth + 1)}
    combos = sum(n * 40 ** (d - 1) for d, n in chains.items())
    per_combo = reference_seconds_per_combination(table, tuple(range(args.depth)))
    print(
        json.dumps(
            {
                "benchmark": "optimizer",
                "models": args.models,
                "depth": args.depth,
                "queries": args.queries,
                "chains": sum(chains.values()),
                "fit_seconds": runs[args.candidates]["fit_seconds"],
                "runs": runs,
                "reference_grid_combinations": combos,
                "reference_seconds_per_combination": round(per_combo, 4),
                "reference_estimated_seconds": round(per_combo * combos, 1),
                "target_seconds": 60,
                "machine": machine(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
