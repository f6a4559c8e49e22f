"""``frugal bench``: fit on a train split only, report single models and the cascade frontier on a test split.

Every figure in the report is measured on the test split; the frontier's points (chains and thresholds)
were all chosen on the train split. ``budget`` of a frontier entry is the train-split cost of that point:
the budget for which ``frugal fit`` would have picked it. ``strategy`` is the saved strategy (the point
``frugal fit`` would deploy) on the test split.

:func:`bench_strategy` (``frugal bench --strategy PATH``) reports a strategy saved earlier, with its own
scorer, on a test split without refitting; the figures that need the train split (``train_queries``,
``selected_by_train_budget``) are then ``None``, and the best single model is the test split's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.costs import PriceSpec
from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.columns import add_capped_columns
from shared_scorer.fitting.combine import score_table
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.fit import FitConfig, build_table, fit, score_rows
from shared_scorer.fitting.frontier import pareto_mask
from shared_scorer.fitting.robust import robust_select
from shared_scorer.fitting.routing import add_router_columns, conditional_after
from shared_scorer.fitting.search import Table, evaluate_chain
from shared_scorer.fitting.signal_fit import test_priors
from shared_scorer.scoring.combiner import logit
from shared_scorer.scoring.encoding import request_of
from shared_scorer.strategy import Frontier, FrontierPoint, Strategy, split_cap

FRACTIONS = (0.1, 0.2, 0.5)
ONE_POINT = 0.01
"""``savings_within_one_point``: the cheapest point at most this far below the best model's accuracy."""


def single_models(table: Table) -> list[dict[str, Any]]:
    """Each model alone: accuracy and mean cost per query."""
    return [
        {
            "model": m,
            "accuracy": float(table.correct[:, j].mean()),
            "cost_per_query": float(table.costs[:, j].mean()),
        }
        for j, m in enumerate(table.models)
    ]


def best_single(singles: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The most accurate model (the cheaper one on a tie)."""
    return sorted(singles, key=lambda s: (-s["accuracy"], s["cost_per_query"]))[0]


def frontier_on(table: Table, frontier: Frontier) -> list[dict[str, Any]]:
    """Each train-chosen frontier point measured on ``table``: accuracy, cost, reach and escalation per stage."""
    out = []
    for point in frontier:
        figures = evaluate_chain(table, point.chain, point.thresholds)
        reach = figures.reach
        escalation = [reach[i + 1] / reach[i] if reach[i] > 0 else 0.0 for i in range(len(reach) - 1)]
        out.append(
            {
                "budget": point.cost,
                "chain": list(point.chain),
                "thresholds": list(point.thresholds),
                "accuracy": figures.accuracy,
                "cost_per_query": figures.cost,
                "escalation_rate": escalation,
                "reach": list(reach),
                "train_accuracy": point.accuracy,
            }
        )
    return out


def headline(frontier: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> dict[str, Any]:
    """The README's figures, from the test-split curve of the frontier points against the best single model."""
    costs = np.array([p["cost_per_query"] for p in frontier])
    accs = np.array([p["accuracy"] for p in frontier])
    best_acc, best_cost = float(best["accuracy"]), float(best["cost_per_query"])
    matched = costs[accs >= best_acc - 1e-12]
    close = costs[accs >= best_acc - ONE_POINT - 1e-12]
    within = accs[costs <= best_cost + 1e-15]

    def at(fraction: float) -> float | None:
        fits = accs[costs <= fraction * best_cost + 1e-15]
        return float(fits.max()) if fits.size else None

    return {
        "best_single_model": best["model"],
        "best_single_accuracy": best_acc,
        "best_single_cost_per_query": best_cost,
        "savings_at_matched_accuracy": float(1 - matched.min() / best_cost) if matched.size and best_cost else None,
        "savings_within_one_point": float(1 - close.min() / best_cost) if close.size and best_cost else None,
        "accuracy_gain_at_equal_cost": float(within.max() - best_acc) if within.size else None,
        "accuracy_at_cost_fraction": {str(f): at(f) for f in FRACTIONS},
        "best_accuracy": float(accs.max()) if accs.size else None,
    }


def selected_by_train_budget(
    train_frontier: Frontier,
    test: Table,
    train_best_cost: float,
    test_best_cost: float,
    fractions: Sequence[float] = (*FRACTIONS, 1.0),
    choose: Callable[[float], FrontierPoint] | None = None,
) -> dict[str, Any]:
    """What a user gets on test when choosing by budget on train: budget = fraction x best model's train cost;
    ``choose(budget)`` picks the point (default: the most accurate train point within the budget)."""
    out: dict[str, Any] = {}
    for fraction in fractions:
        try:
            budget = fraction * train_best_cost
            point = choose(budget) if choose is not None else train_frontier.select(budget=budget)
        except ConfigurationError:
            out[str(fraction)] = None
            continue
        figures = evaluate_chain(test, point.chain, point.thresholds)
        out[str(fraction)] = {
            "chain": list(point.chain),
            "thresholds": list(point.thresholds),
            "accuracy": figures.accuracy,
            "cost_per_query": figures.cost,
            "cost_fraction": figures.cost / test_best_cost if test_best_cost else None,
        }
    return out


def strategy_on(table: Table, strategy: Strategy, best: Mapping[str, Any]) -> dict[str, Any]:
    """The saved strategy's point measured on ``table``: accuracy, cost per query, and that cost as a
    fraction of the best single model's cost on the same queries."""
    figures = evaluate_chain(table, strategy.chain, strategy.thresholds)
    best_cost = float(best["cost_per_query"])
    return {
        "chain": list(strategy.chain),
        "thresholds": list(strategy.thresholds),
        "objective": dict(strategy.objective),
        "accuracy": figures.accuracy,
        "cost_per_query": figures.cost,
        "cost_fraction_of_best_single": figures.cost / best_cost if best_cost else None,
        "expected_on_fitting_data": dict(strategy.expected),
    }


def _test_tables(
    scorer: Any,
    test_records: Sequence[Record],
    models: Sequence[str],
    caps: Mapping[str, Any],
    prices: Mapping[str, PriceSpec] | None,
    gates: Mapping[str, Sequence[float]] | None = None,
) -> tuple[Table, Table]:
    """(the test table without caps, with every searched column): the test rows scored by ``scorer`` as the
    cascade would score them, at each position (its combiners, its prior for the ``gates``)."""
    test_rows = [r for r in test_records if r.model in set(models)]
    ids, complete = _complete(test_rows, models)
    combiners = getattr(scorer, "combiners", None) or {}
    if not all(m in combiners for m in models):
        values = score_rows(scorer, complete)
        scores = {(r.query_id, r.model): float(v) for r, v in zip(complete, values, strict=True)}
        test_ids, plain_test = build_table(complete, models, scores, prices)
        test_table, _ = add_capped_columns(plain_test, test_ids, complete, caps, prices)
        return plain_test, test_table
    requests = [request_of(r) for r in complete]
    # a scorer without raw logits (a custom trainer's) gave fit the logit of its calibrated score
    logits = scorer.logits(requests) if hasattr(scorer, "logits") else logit(np.asarray(scorer.score_batch(requests)))
    text = {(r.query_id, r.model): float(v) for r, v in zip(complete, logits, strict=True)}
    priors = test_priors(scorer, ids, complete, models)
    prior = (
        None
        if priors is None
        else {(q, m): float(priors[i, j]) for i, q in enumerate(ids) for j, m in enumerate(models)}
    )
    first, after = score_table(ids, complete, models, combiners, text, prior)
    scores = {(q, m): float(first[i, j]) for i, q in enumerate(ids) for j, m in enumerate(models)}
    test_ids, plain_test = build_table(complete, models, scores, prices)
    test_table, _ = add_capped_columns(plain_test, test_ids, complete, caps, prices)
    if gates and priors is not None:
        test_table, _ = add_router_columns(test_table, models, priors, given=gates)
    return plain_test, conditional_after(test_table, models, first, after)


def _pareto(frontier: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    costs = np.array([p["cost_per_query"] for p in frontier])
    return [frontier[i] for i in pareto_mask(costs, np.array([p["accuracy"] for p in frontier]))]


def bench_strategy(
    strategy_path: str | Path,
    test_records: Sequence[Record],
    *,
    prices: Mapping[str, PriceSpec] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Report the strategy saved at ``strategy_path`` (a file or its folder) on ``test_records`` with the
    scorer saved beside it, without refitting. Costs are priced with ``prices``, else with the prices the
    strategy was fitted with (else the recorded ``cost_usd``). The report has :func:`bench`'s keys."""
    from shared_scorer.scoring.distilbert import DistilBertScorer

    started = time.perf_counter()
    strategy = Strategy.load(strategy_path)
    models = list(dict.fromkeys(strategy.info.get("models") or [split_cap(m)[0] for m in strategy.models]))
    if prices is None and strategy.prices:
        prices = dict(strategy.prices)
    if progress:
        progress(f"scoring the test split with {strategy.scorer_path()} ({len(test_records)} rows)")
    scorer = DistilBertScorer.load(strategy.scorer_path(), expect_models=models)
    caps = strategy.info.get("caps") or {}
    t0 = time.perf_counter()
    plain_test, test_table = _test_tables(scorer, test_records, models, caps, prices, strategy.info.get("gates"))
    score_seconds = time.perf_counter() - t0
    singles = single_models(plain_test)
    best = best_single(singles)
    frontier = frontier_on(test_table, strategy.frontier)
    return {
        "train_queries": None,
        "test_queries": test_table.n,
        "models": models,
        "caps": caps,
        "single_models": singles,
        "frontier": frontier,
        "test_pareto": _pareto(frontier),
        "headline": headline(frontier, best),
        "strategy": strategy_on(test_table, strategy, best),
        "selected_by_train_budget": None,
        "selected_robust_by_train_budget": None,
        "out_of_fold_auroc": strategy.info.get("out_of_fold_auroc"),
        "fit": {"strategy": str(strategy.path), "seconds": {"score_test": round(score_seconds, 2)}},
        "refit": False,
        "best_single_chosen_on": "test",
        "seconds_total": round(time.perf_counter() - started, 2),
    }


def bench(
    train_records: Sequence[Record],
    test_records: Sequence[Record],
    out: str | Path,
    config: FitConfig | None = None,
    *,
    prices: Mapping[str, PriceSpec] | None = None,
    price_table: Mapping[str, Mapping[str, str]] | None = None,
    train: Callable[[Sequence[Record], int], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit on ``train_records`` (writing ``out/``), score ``test_records``, and return the report dict."""
    started = time.perf_counter()
    config = config or FitConfig()
    result = fit(train_records, out, config, prices=prices, price_table=price_table, train=train, progress=progress)
    models = list(dict.fromkeys(result.table.base or result.table.models))  # provider models, not model@cap
    if progress:
        progress(f"scoring the test split with the final scorer ({len(test_records)} rows)")
    t0 = time.perf_counter()
    caps = result.strategy.info.get("caps") or {}
    gates = result.strategy.info.get("gates")
    plain_test, test_table = _test_tables(result.scorer, test_records, models, caps, prices, gates)
    score_seconds = time.perf_counter() - t0
    singles = single_models(plain_test)
    train_singles = [s for s in single_models(result.table) if s["model"] in set(models)]
    best = next(s for s in singles if s["model"] == best_single(train_singles)["model"])
    frontier = frontier_on(test_table, result.strategy.frontier)
    train_best_cost = next(s for s in train_singles if s["model"] == best["model"])["cost_per_query"]
    return {
        "train_queries": result.table.n,
        "test_queries": test_table.n,
        "models": models,
        "caps": caps,
        "single_models": singles,
        "frontier": frontier,
        "test_pareto": _pareto(frontier),
        "headline": headline(frontier, best),
        "strategy": strategy_on(test_table, result.strategy, best),
        "selected_by_train_budget": selected_by_train_budget(
            result.strategy.frontier, test_table, train_best_cost, float(best["cost_per_query"])
        ),
        "selected_robust_by_train_budget": None
        if result.groups is None
        else selected_by_train_budget(
            result.strategy.frontier,
            test_table,
            train_best_cost,
            float(best["cost_per_query"]),
            choose=lambda b: robust_select(result.strategy.frontier, result.table, _groups(result.groups), b),
        ),
        "out_of_fold_auroc": result.strategy.info.get("out_of_fold_auroc"),
        "fit": {
            "folds": config.folds,
            "max_depth": config.max_depth,
            "candidates": config.candidates,
            "strategy": str(Path(out) / "strategy.json"),
            "seconds": {**{k: round(v, 2) for k, v in result.seconds.items()}, "score_test": round(score_seconds, 2)},
        },
        "refit": True,
        "best_single_chosen_on": "train",
        "seconds_total": round(time.perf_counter() - started, 2),
    }


def _groups(groups: np.ndarray | None) -> np.ndarray:
    assert groups is not None
    return groups


def _complete(rows: Sequence[Record], models: Sequence[str]) -> tuple[list[str], list[Record]]:
    from shared_scorer.fitting.fit import complete_rows

    return complete_rows(rows, models)


def plot(report: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Draw the test frontier with the single models as points (needs matplotlib: the ``report`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigurationError("--plot needs matplotlib: pip install 'frugal-cascade[report]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pareto = sorted(report["test_pareto"], key=lambda p: p["cost_per_query"])
    ax.step(
        [p["cost_per_query"] for p in pareto], [p["accuracy"] for p in pareto], where="post", label="cascade (test)"
    )
    pts = report["frontier"]
    ax.scatter([p["cost_per_query"] for p in pts], [p["accuracy"] for p in pts], s=6, alpha=0.3, color="C0")
    for s in report["single_models"]:
        ax.scatter([s["cost_per_query"]], [s["accuracy"]], color="C3", zorder=3)
        ax.annotate(
            s["model"], (s["cost_per_query"], s["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "cost-accuracy frontier (fitted on train, measured on test)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target
