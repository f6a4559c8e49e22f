"""``frugal advise``: what each model is worth to the cascade, from the same fit and search as ``frugal bench``.

Every figure is measured on the test split; every chain and threshold behind it was chosen on the train
split's out-of-fold scores (``frugal fit``'s table), then picked by budget exactly as
:func:`shared_scorer.fitting.bench.selected_by_train_budget` does: at a budget of ``f`` times the best
single model's train cost, the train frontier's most accurate point within it, measured on test. The best
single model is the most accurate one on train (the full model set's, also when a model is left out).

* **Depth curve.** The frontier of chains of at most 1, 2, ... models. Depths up to ``SearchOptions.max_depth``
  (the fit's, default 3) are searched exactly as ``fit`` does (its candidate thresholds and capped columns);
  a deeper one adds chains of uncapped models over a coarse grid of ``deep_grid_points`` thresholds per stage,
  merged with the depth before (an exhaustive deep search is ``O(G^(depth-1))`` cells per chain).
  ``enough_depth`` is the smallest depth no deeper one beats by a point (0.01) at any budget.
* **Leave one model out.** The frontier searched without a model (and its capped columns): the accuracy lost
  at each budget, and the test cost of the train-cheapest point reaching the best single model's train
  accuracy. ``score`` is the mean accuracy loss over the budgets; models are ranked by it, then by the extra
  cost to match the best single model. A model whose removal loses nothing anywhere is in ``drop``.
* **Candidate model.** A new model's answers on some queries: on those queries, 2-fold cross-validation
  (choose on one half, measure on the other) of the frontier with and without it, and a bootstrap over
  queries (fixed seed) of the mean accuracy gain over the budgets. Lower bound > 0: collect the rest;
  upper bound <= 0: don't; otherwise collect more answers first.
* **Price what-if.** New prices re-price the recorded tokens (no calls, no refit: the scores do not depend
  on prices) and everything above is recomputed; the report under the recorded prices is kept beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.costs import PriceSpec
from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.bench import best_single, selected_by_train_budget, single_models
from shared_scorer.fitting.columns import add_capped_columns
from shared_scorer.fitting.crossfit import fold_of
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.fit import FitConfig, build_table, complete_rows, fit, score_rows
from shared_scorer.fitting.frontier import merge
from shared_scorer.fitting.search import Table, evaluate_chain, search
from shared_scorer.strategy import EPS, Frontier, FrontierPoint

FRACTIONS = (0.1, 0.2, 0.5, 1.0)
"""Budgets, as fractions of the best single model's cost."""
ONE_POINT = 0.01


@dataclass(frozen=True)
class SearchOptions:
    """How frontiers are searched: the fit's options, plus the coarse grid of depths beyond ``max_depth``."""

    max_depth: int = 3
    candidates: str = "both"
    grid_points: int = 40
    max_quantiles: int = 64
    deep_grid_points: int = 6

    @classmethod
    def of(cls, config: FitConfig, deep_grid_points: int = 6) -> SearchOptions:
        return cls(config.max_depth, config.candidates, config.grid_points, config.max_quantiles, deep_grid_points)

    def frontier(self, table: Table, depth: int | None = None) -> Frontier:
        """The train frontier of chains of at most ``depth`` models (default ``max_depth``)."""
        return search(
            table,
            max_depth=min(depth or self.max_depth, self.max_depth),
            candidates=self.candidates,  # type: ignore[arg-type]
            grid_points=self.grid_points,
            max_quantiles=self.max_quantiles,
        )


@dataclass(frozen=True)
class Reference:
    """The best single model (chosen on train) and its cost on both splits: the budgets' unit."""

    model: str
    train_accuracy: float
    train_cost: float
    test_accuracy: float
    test_cost: float

    @classmethod
    def of(cls, train: Table, test: Table) -> Reference:
        train_singles = _singles(train)
        best = best_single(train_singles)
        tested = next(s for s in _singles(test) if s["model"] == best["model"])
        return cls(
            best["model"], best["accuracy"], best["cost_per_query"], tested["accuracy"], tested["cost_per_query"]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "train_accuracy": self.train_accuracy,
            "train_cost_per_query": self.train_cost,
            "test_accuracy": self.test_accuracy,
            "test_cost_per_query": self.test_cost,
        }


def models_of_table(table: Table) -> list[str]:
    """The provider models of a table (``model@cap`` columns belong to their model), in column order."""
    return list(dict.fromkeys(table.base or table.models))


def _singles(table: Table) -> list[dict[str, Any]]:
    plain = set(models_of_table(table))
    return [s for s in single_models(table) if s["model"] in plain]


def columns(table: Table, keep: Sequence[int]) -> Table:
    """The table with only the columns ``keep`` (in that order)."""
    idx = list(keep)
    if not idx:
        raise DataError("no model left in the table")
    return Table.of(
        [table.models[j] for j in idx],
        table.scores[:, idx],
        table.correct[:, idx],
        table.costs[:, idx],
        valid=None if table.valid is None else table.valid[:, idx],
        base=None if table.base is None else [table.base[j] for j in idx],
    )


def without(table: Table, models: Sequence[str]) -> Table:
    """The table without ``models`` and their capped columns."""
    base = table.base or table.models
    return columns(table, [j for j, b in enumerate(base) if b not in set(models)])


def uncapped(table: Table) -> Table:
    """The table's plain columns only."""
    base = table.base or table.models
    return columns(table, [j for j, m in enumerate(table.models) if m == base[j]])


def rows(table: Table, idx: Sequence[int] | np.ndarray) -> Table:
    """The table with only the rows ``idx`` (repeats allowed: a bootstrap resample)."""
    i = np.asarray(idx, dtype=np.int64)
    return Table.of(
        table.models,
        table.scores[i],
        table.correct[i],
        table.costs[i],
        valid=None if table.valid is None else table.valid[i],
        base=table.base,
    )


def budget_curve(frontier: Frontier, test: Table, ref: Reference) -> dict[str, Any]:
    """Train-chosen points measured on ``test``: accuracy at each budget fraction, and the cost to match ``ref``."""
    selected = selected_by_train_budget(frontier, test, ref.train_cost, ref.test_cost, FRACTIONS)
    try:
        point = frontier.select(target_accuracy=ref.train_accuracy)
        figures = evaluate_chain(test, point.chain, point.thresholds)
        match: dict[str, Any] | None = {
            "chain": list(point.chain),
            "thresholds": list(point.thresholds),
            "accuracy": figures.accuracy,
            "cost_per_query": figures.cost,
        }
    except ConfigurationError:
        match = None
    return {
        "accuracy_at_cost_fraction": {k: (v["accuracy"] if v else None) for k, v in selected.items()},
        "selected": selected,
        "cost_to_match_best_single_usd": match["cost_per_query"] if match else None,
        "match": match,
    }


def _acc(value: float | None) -> float:
    """No point within a budget answers nothing: accuracy 0."""
    return 0.0 if value is None else value


def depth_curve(
    train: Table,
    test: Table,
    options: SearchOptions,
    ref: Reference,
    max_depth: int | None = None,
    known: Mapping[int, Frontier] | None = None,
) -> list[dict[str, Any]]:
    """The budget curve of the best frontier with chains of at most 1, 2, ... models (``known``: frontiers
    already searched, by depth)."""
    deepest = min(max_depth or len(models_of_table(train)), len(models_of_table(train)))
    out: list[dict[str, Any]] = []
    frontier: Frontier | None = None
    for depth in range(1, deepest + 1):
        if depth <= options.max_depth:
            frontier = (known or {}).get(depth) or options.frontier(train, depth)
            how = "fit"
        else:
            deep = search(uncapped(train), max_depth=depth, candidates="grid", grid_points=options.deep_grid_points)
            frontier = merge([frontier, deep]) if frontier is not None else deep
            how = f"uncapped, {options.deep_grid_points}-point grid"
        curve = budget_curve(frontier, test, ref)
        out.append({"max_depth": depth, "search": how, **curve, "frontier_points": len(frontier)})
    return out


def enough_depth(curve: Sequence[Mapping[str, Any]], gain: float = ONE_POINT) -> int | None:
    """The smallest depth that no deeper one beats by ``gain`` or more at any budget fraction.

    >>> enough_depth([{"max_depth": 1, "accuracy_at_cost_fraction": {"1.0": 0.5}},
    ...               {"max_depth": 2, "accuracy_at_cost_fraction": {"1.0": 0.7}},
    ...               {"max_depth": 3, "accuracy_at_cost_fraction": {"1.0": 0.705}}])
    2
    """
    for i, here in enumerate(curve):
        mine = here["accuracy_at_cost_fraction"]
        if all(
            _acc(later["accuracy_at_cost_fraction"][f]) - _acc(mine[f]) < gain - EPS
            for later in curve[i + 1 :]
            for f in mine
        ):
            return int(here["max_depth"])
    return None


def leave_one_out(
    train: Table, test: Table, options: SearchOptions, ref: Reference, full: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Each model's value: what the frontier loses without it (ranked, most valuable first)."""
    full_acc = full["accuracy_at_cost_fraction"]
    full_cost = full["cost_to_match_best_single_usd"]
    out: list[dict[str, Any]] = []
    for model in models_of_table(train):
        rest_train, rest_test = without(train, [model]), without(test, [model])
        curve = budget_curve(options.frontier(rest_train), rest_test, ref)
        acc = curve["accuracy_at_cost_fraction"]
        loss = {f: _acc(full_acc[f]) - _acc(acc[f]) for f in full_acc}
        cost = curve["cost_to_match_best_single_usd"]
        if cost is None:
            extra = 0.0 if full_cost is None else math.inf
        else:
            extra = -math.inf if full_cost is None else cost - full_cost
        out.append(
            {
                "model": model,
                "value": {
                    "accuracy_loss_at_cost_fraction": loss,
                    "accuracy_without_at_cost_fraction": acc,
                    "cost_to_match_best_single_usd": cost,
                    "extra_cost_to_match_best_single_usd": extra if math.isfinite(extra) else None,
                    "match_unreachable_without": cost is None and full_cost is not None,
                    "score": sum(loss.values()) / len(loss),
                },
                "_extra": extra,
            }
        )
    out.sort(key=lambda e: (-e["value"]["score"], -e["_extra"], e["model"]))
    for e in out:
        e["drop"] = all(v <= EPS for v in e["value"]["accuracy_loss_at_cost_fraction"].values()) and e["_extra"] <= EPS
        del e["_extra"]
    return out


def candidate_value(
    table: Table,
    candidate: str,
    options: SearchOptions,
    *,
    seed: int = 0,
    resamples: int = 200,
    level: float = 0.95,
) -> dict[str, Any]:
    """The marginal value of ``candidate`` (a column of ``table``, which holds only the queries it answered).

    The queries are cut in two halves (seeded); each half is measured with frontiers (with and without the
    candidate) searched on the other half, selected by budget as everywhere in ``advise``. ``value`` is the mean
    over the budget fractions of the accuracy gain; the interval is the bootstrap's over the measured queries
    (the chosen points held fixed, so it shows the measurement's noise, not the choice's).
    """
    if candidate not in models_of_table(table):
        raise ConfigurationError(f"candidate {candidate!r} is not a column of the table")
    if table.n < 4:
        raise DataError(f"the candidate answered {table.n} queries of the data: at least 4 are needed")
    ids = [str(i) for i in range(table.n)]
    halves_of = fold_of(ids, 2, seed)
    fold = np.array([halves_of[q] for q in ids])
    halves = []
    for h in (0, 1):
        choose, measure = rows(table, np.flatnonzero(fold != h)), rows(table, np.flatnonzero(fold == h))
        rest = without(choose, [candidate])
        ref = best_single(_singles(rest))
        budget = ref["cost_per_query"]
        picked = {}
        for name, frontier in (("with", options.frontier(choose)), ("without", options.frontier(rest))):
            picked[name] = [_select(frontier, f * budget) for f in FRACTIONS]
        halves.append((np.flatnonzero(fold == h), measure, picked))

    def gains(idx: np.ndarray) -> tuple[float, float, float]:
        totals = {"with": np.zeros(len(FRACTIONS)), "without": np.zeros(len(FRACTIONS))}
        cost = {"with": 0.0, "without": 0.0}
        position = np.full(table.n, -1)
        for where, measure, picked in halves:
            position[where] = np.arange(len(where))
            mine = position[idx[np.isin(idx, where)]]
            if not len(mine):
                continue
            sub = rows(measure, mine)
            for name, points in picked.items():
                for k, point in enumerate(points):
                    if point is not None:
                        figures = evaluate_chain(sub, point.chain, point.thresholds)
                        totals[name][k] += figures.accuracy * len(mine)
                        if FRACTIONS[k] == 1.0:
                            cost[name] += figures.cost * len(mine)
        gain = (totals["with"] - totals["without"]) / len(idx)
        return float(gain.mean()), float(gain[-1]), (cost["with"] - cost["without"]) / len(idx)

    everyone = np.arange(table.n)
    value, at_full, cost_delta = gains(everyone)
    rng = np.random.default_rng(seed)
    draws = np.array([gains(rng.integers(0, table.n, table.n))[0] for _ in range(resamples)])
    tail = (1 - level) / 2 * 100
    low, high = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    if low > EPS:
        decision = "collect"
    elif high <= EPS:
        decision = "don't collect"
    else:
        decision = "uncertain, collect more"
    per_fraction = (
        "mean accuracy gain over the budget fractions "
        + ", ".join(str(f) for f in FRACTIONS)
        + " of the best single model's cost"
    )
    return {
        "model": candidate,
        "queries": table.n,
        "value": value,
        "meaning": per_fraction,
        "accuracy_gain_at_best_single_cost": at_full,
        "cost_change_at_best_single_cost_usd": cost_delta,
        "interval": [low, high],
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "decision": decision,
    }


def _select(frontier: Frontier, budget: float) -> FrontierPoint | None:
    try:
        return frontier.select(budget=budget)
    except ConfigurationError:
        return None


def advise_tables(
    train: Table,
    test: Table,
    options: SearchOptions | None = None,
    *,
    max_depth: int | None = None,
    candidate: tuple[Table, str] | None = None,
    seed: int = 0,
    resamples: int = 200,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Depth curve, leave-one-out values and (given) the candidate's value, from a train and a test table."""
    options = options or SearchOptions()
    if train.models != test.models:
        raise DataError(f"train and test tables have different columns: {train.models} vs {test.models}")
    ref = Reference.of(train, test)
    ref_models = models_of_table(train)
    if progress:
        progress("depth curve")
    searched = options.frontier(train)
    depth = depth_curve(train, test, options, ref, max_depth, {min(options.max_depth, len(ref_models)): searched})
    full = budget_curve(searched, test, ref)
    if progress:
        progress("leave one model out")
    models = leave_one_out(train, test, options, ref, full)
    report: dict[str, Any] = {
        "fractions": [str(f) for f in FRACTIONS],
        "best_single": ref.to_json(),
        "depth": depth,
        "enough_depth": enough_depth(depth),
        "frontier": {"max_depth": options.max_depth, **full},
        "models": models,
        "drop": [m["model"] for m in models if m["drop"]],
    }
    if candidate is not None:
        if progress:
            progress(f"candidate {candidate[1]}: {resamples} bootstrap resamples")
        report["candidate"] = candidate_value(candidate[0], candidate[1], options, seed=seed, resamples=resamples)
    return report


@dataclass
class Scored:
    """Every answer's score, fixed once (scores do not depend on prices): out-of-fold on train, the final
    scorer's on test; ``scorer`` scores a candidate model's answers (``None``: scores are the labels)."""

    models: list[str]
    caps: dict[str, list[int]]
    train_ids: list[str]
    train_rows: list[Record]
    train_scores: dict[tuple[str, str], float]
    test_ids: list[str]
    test_rows: list[Record]
    test_scores: dict[tuple[str, str], float]
    scorer: Any = None
    how: str = "cross-fitted"

    def tables(self, prices: Mapping[str, PriceSpec] | None) -> tuple[Table, Table]:
        """The train and test tables (capped columns included) with costs under ``prices``."""
        out = []
        for ids, rows_, scores in (
            (self.train_ids, self.train_rows, self.train_scores),
            (self.test_ids, self.test_rows, self.test_scores),
        ):
            _, plain = build_table(rows_, self.models, scores, prices)
            table, _ = add_capped_columns(plain, ids, rows_, self.caps, prices)
            out.append(table)
        return out[0], out[1]

    def score(self, rows_: Sequence[Record]) -> list[float]:
        if self.scorer is None:
            return [r.correct for r in rows_]
        return [float(v) for v in score_rows(self.scorer, rows_)]


def fitted_scores(
    train_records: Sequence[Record],
    test_records: Sequence[Record],
    out: str | Path,
    config: FitConfig,
    *,
    prices: Mapping[str, PriceSpec] | None = None,
    price_table: Mapping[str, Mapping[str, str]] | None = None,
    train: Callable[[Sequence[Record], int], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Scored:
    """``frugal fit`` on train (writing ``out/``), then the test split scored by its final scorer, as in bench."""
    result = fit(train_records, out, config, prices=prices, price_table=price_table, train=train, progress=progress)
    models = list(dict.fromkeys(result.table.base or result.table.models))
    train_ids, train_rows = complete_rows(train_records, models)
    column = {m: j for j, m in enumerate(result.table.models)}
    train_scores = {(q, m): float(result.table.scores[i, column[m]]) for i, q in enumerate(train_ids) for m in models}
    if progress:
        progress(f"scoring the test split with the final scorer ({len(test_records)} rows)")
    test_ids, test_rows = complete_rows([r for r in test_records if r.model in set(models)], models)
    values = score_rows(result.scorer, test_rows)
    test_scores = {(r.query_id, r.model): float(v) for r, v in zip(test_rows, values, strict=True)}
    caps = {m: list(c) for m, c in (result.strategy.info.get("caps") or {}).items()}
    return Scored(models, caps, train_ids, train_rows, train_scores, test_ids, test_rows, test_scores, result.scorer)


def label_scores(
    train_records: Sequence[Record],
    test_records: Sequence[Record],
    models: Sequence[str] | None = None,
    caps: str | Sequence[int] = "auto",
) -> Scored:
    """Scores that are the recorded labels (``--scorer oracle``): what each model is worth to a perfect scorer.
    Capped columns are chosen as ``fit`` chooses them (``caps``)."""
    from shared_scorer.fitting.columns import choose_caps
    from shared_scorer.fitting.data import models_of

    chosen = list(models or models_of(train_records))
    train_ids, train_rows = complete_rows(train_records, chosen)
    test_ids, test_rows = complete_rows([r for r in test_records if r.model in set(chosen)], chosen)
    labels = {(r.query_id, r.model): r.correct for r in [*train_rows, *test_rows]}
    capped = choose_caps(train_rows, chosen, caps)
    return Scored(chosen, capped, train_ids, train_rows, labels, test_ids, test_rows, labels, None, "oracle (labels)")


def candidate_table(
    scored: Scored, train: Table, test: Table, records: Sequence[Record], prices: Mapping[str, PriceSpec] | None
) -> tuple[Table, str]:
    """The queries a candidate model answered: every known column there, plus the candidate's."""
    from shared_scorer.fitting.data import models_of
    from shared_scorer.fitting.fit import row_cost

    names = models_of(records)
    if len(names) != 1:
        raise DataError(f"the candidate file must hold one model's answers, got {names}")
    name = names[0]
    if name in scored.models:
        raise DataError(f"candidate model {name!r} is already in the data; give a new model's answers")
    where = {q: ("train", i) for i, q in enumerate(scored.train_ids)}
    where.update({q: ("test", i) for i, q in enumerate(scored.test_ids)})
    covered = [r for r in records if r.query_id in where]
    if not covered:
        raise DataError(f"candidate {name!r} answered none of the queries every known model answered")
    split = {"train": train, "test": test}
    picked = [split[where[r.query_id][0]] for r in covered]
    index = [where[r.query_id][1] for r in covered]
    stack = {
        attr: np.vstack([getattr(t, attr)[i] for t, i in zip(picked, index, strict=True)])
        for attr in ("scores", "correct", "costs")
    }
    valid = np.vstack([_usable(t, i) for t, i in zip(picked, index, strict=True)])
    new_scores = np.asarray(scored.score(covered), dtype=float)[:, None]
    new_correct = np.array([[r.correct] for r in covered])
    new_costs = np.array([[row_cost(r, prices)] for r in covered])
    base = list(train.base or train.models)
    table = Table.of(
        [*train.models, name],
        np.hstack([stack["scores"], new_scores]),
        np.hstack([stack["correct"], new_correct]),
        np.hstack([stack["costs"], new_costs]),
        valid=np.hstack([valid, np.ones((len(covered), 1))]),
        base=[*base, name],
    )
    return table, name


def _usable(table: Table, i: int) -> np.ndarray:
    return np.ones(len(table.models), dtype=bool) if table.valid is None else table.valid[i]


def check_overrides(overrides: Mapping[str, Any], records: Sequence[Record], where: str = "the data") -> None:
    """A re-priced model must be in the data and every one of its rows must carry both token counts."""
    known = {r.model for r in records}
    for model in overrides:
        if model not in known:
            raise ConfigurationError(f"--price {model}: no such model in {where} (it has {sorted(known)})")
        missing = sum(1 for r in records if r.model == model and (r.input_tokens is None or r.output_tokens is None))
        if missing:
            raise ConfigurationError(
                f"--price {model}: {missing} of its rows have no input_tokens/output_tokens, "
                "so its cost cannot be recomputed from tokens"
            )


def advise(
    train_records: Sequence[Record],
    test_records: Sequence[Record],
    out: str | Path | None,
    config: FitConfig | None = None,
    *,
    prices: Mapping[str, PriceSpec] | None = None,
    price_table: Mapping[str, Mapping[str, str]] | None = None,
    overrides: Mapping[str, Sequence[str | float]] | None = None,
    candidate: Sequence[Record] | None = None,
    oracle: bool = False,
    max_depth: int | None = None,
    deep_grid_points: int = 6,
    resamples: int = 200,
    seed: int = 0,
    train: Callable[[Sequence[Record], int], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit once (or take the labels as scores with ``oracle``), then the report of :func:`advise_tables` under
    ``prices``; with ``overrides`` (``{model: (input, output)}`` USD per million tokens) the top level is
    recomputed under them and the recorded prices' report is kept under ``baseline``."""
    config = config or FitConfig()
    repriced: dict[str, tuple[str, str]] = {m: (str(v[0]), str(v[1])) for m, v in (overrides or {}).items()}
    if repriced:
        check_overrides(repriced, [*train_records, *test_records, *(candidate or [])])
    if oracle:
        scored = label_scores(train_records, test_records, config.models, config.caps)
    else:
        if out is None:
            raise ConfigurationError("advise needs a folder for the fitted strategy (out)")
        scored = fitted_scores(
            train_records,
            test_records,
            out,
            config,
            prices=prices,
            price_table=price_table,
            train=train,
            progress=progress,
        )
    options = SearchOptions.of(config, deep_grid_points)

    def under(costs: Mapping[str, PriceSpec] | None) -> dict[str, Any]:
        train_table, test_table = scored.tables(costs)
        cand = candidate_table(scored, train_table, test_table, candidate, costs) if candidate else None
        return advise_tables(
            train_table,
            test_table,
            options,
            max_depth=max_depth,
            candidate=cand,
            seed=seed,
            resamples=resamples,
            progress=progress,
        )

    report = under(prices)
    if repriced:
        baseline = report
        report = under({**(prices or {}), **repriced})
        report["baseline"] = {k: baseline[k] for k in ("best_single", "depth", "enough_depth", "models", "drop")}
        if "candidate" in baseline:
            report["baseline"]["candidate"] = baseline["candidate"]
        report["ranking_changed"] = [m["model"] for m in report["models"]] != [m["model"] for m in baseline["models"]]
    report["prices"] = {m: {"input_per_mtok": i, "output_per_mtok": o} for m, (i, o) in repriced.items()}
    report["scores"] = scored.how
    report["train_queries"] = len(scored.train_ids)
    report["test_queries"] = len(scored.test_ids)
    report["search"] = {
        "max_depth": options.max_depth,
        "candidates": options.candidates,
        "deep_grid_points": options.deep_grid_points,
        "caps": scored.caps,
    }
    return report


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def table(report: Mapping[str, Any]) -> str:
    """The report as a terminal table: depth curve, then the models ranked by value, then the verdicts."""
    fractions = report["fractions"]
    best = report["best_single"]
    head = "  ".join(f"{'@' + f:>6}" for f in fractions)
    lines = [
        f"budgets: fractions of {best['model']}'s cost ({best['test_cost_per_query']:.6g} USD/query on test, "
        f"accuracy {100 * best['test_accuracy']:.1f}%); scores: {report.get('scores', '?')}",
        "",
        f"depth  {head}  cost to match best single",
    ]
    for d in report["depth"]:
        acc = d["accuracy_at_cost_fraction"]
        cost = d["cost_to_match_best_single_usd"]
        lines.append(
            f"{d['max_depth']:>5}  "
            + "  ".join(f"{_pct(acc[f]):>6}" for f in fractions)
            + f"  {'unreachable' if cost is None else f'{cost:.6g}'}"
        )
    lines.append(f"enough depth (deeper gains < 1 point at every budget): {report['enough_depth']}")
    lines += ["", f"{'model':<28} {'score':>7}  " + "  ".join(f"{'-@' + f:>6}" for f in fractions) + "  extra cost"]
    for m in report["models"]:
        v = m["value"]
        extra = v["extra_cost_to_match_best_single_usd"]
        extra_text = "unreachable" if v["match_unreachable_without"] else ("-" if extra is None else f"{extra:+.6g}")
        loss = v["accuracy_loss_at_cost_fraction"]
        lines.append(
            f"{m['model']:<28} {100 * v['score']:6.2f}   "
            + "  ".join(f"{100 * loss[f]:+5.1f}" for f in fractions)
            + f"  {extra_text}"
        )
    lines.append(f"never worth calling (removal costs nothing): {', '.join(report['drop']) or 'none'}")
    if "candidate" in report:
        c = report["candidate"]
        lo, hi = c["interval"]
        lines.append(
            f"candidate {c['model']} on {c['queries']} queries: value {100 * c['value']:+.2f} points "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] ({100 * c['level']:.0f}%, {c['resamples']} resamples): {c['decision']}"
        )
    if report.get("prices"):
        lines.append(f"prices what-if: {report['prices']}; ranking changed: {report.get('ranking_changed')}")
    return "\n".join(lines)


def plot(report: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Depth curves (accuracy against budget) beside a bar chart of each model's value (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigurationError("--plot needs matplotlib: pip install 'frugal-cascade[report]'") from exc
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    fractions = report["fractions"]
    for d in report["depth"]:
        acc = [d["accuracy_at_cost_fraction"][f] for f in fractions]
        left.plot(
            [float(f) for f in fractions],
            [float("nan") if a is None else a for a in acc],
            marker="o",
            label=f"at most {d['max_depth']} model{'s' if d['max_depth'] > 1 else ''}",
        )
    left.set_xscale("log")
    left.set_xlabel(f"budget (fraction of {report['best_single']['model']}'s cost)")
    left.set_ylabel("test accuracy")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    models = report["models"]
    values = [100 * m["value"]["score"] for m in models]
    right.barh(
        [m["model"] for m in models][::-1], values[::-1], color=["C3" if m["drop"] else "C0" for m in models][::-1]
    )
    right.set_xlabel("mean accuracy lost without it (points)")
    right.axvline(0, color="k", lw=0.5)
    fig.suptitle(title or "what each model is worth")
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target
