"""``frugal fit``: cross-fitted scorer training, then the exact chain and threshold search.

Why cross-fitting. A scorer rates the answers it was trained on too kindly, so thresholds chosen on those
scores escalate too little on new queries. The training queries are cut into ``folds`` groups (by query,
so every model's answer to a query lands in the same fold); a scorer trained on the other folds scores
each group. Thresholds are chosen on these out-of-fold scores only; the scorer that ships is trained the
same way on every training query.

Two designs (``FitConfig.design``):

* ``top-layer`` (default): the backbone's lower layers are frozen and run once per pair; each fold trains
  the top layer and the head on the cached states (see :mod:`shared_scorer.fitting.crossfit`). Out-of-fold logits
  are calibrated per model (isotonic) and those calibrators ship with the final scorer, so a shipped
  score and an out-of-fold score mean the same probability.
* ``full``: each fold runs ``DistilBertScorer.train`` itself (calibrated on its own held-out queries).

The CPU budget. ``frugal bench`` must fit and report SimpleQA (12.9k training pairs) within 20 minutes on
two CPU cores, where the full fine-tune runs at about 10-20 pairs per second: too slow for k folds. With
``top-layer`` the cost is one frozen forward pass over the training pairs, a few seconds per fold, and
the test split's scoring; pairs are cut to 96 word pieces (question first, then the head and tail of the
answer). ``FitConfig.train`` and ``FitConfig.top`` change any of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.costs import PriceSpec, resolve_price
from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.columns import add_capped_columns, choose_caps
from shared_scorer.fitting.crossfit import TopLayerConfig, cross_fit_top_layer, fold_of
from shared_scorer.fitting.data import Record, fingerprint, models_of
from shared_scorer.fitting.robust import robust_select
from shared_scorer.fitting.search import Table, search
from shared_scorer.fitting.signal_fit import SignalFit
from shared_scorer.scoring.combiner import FEATURES, logit
from shared_scorer.scoring.encoding import request_of
from shared_scorer.scoring.training import TrainConfig
from shared_scorer.strategy import Frontier, Strategy

ScoreFn = Callable[[Sequence[Record]], np.ndarray]
TrainFn = Callable[[Sequence[Record], int], ScoreFn]
"""``train(records, seed)`` returns a function that scores rows (calibrated probabilities)."""


def default_train_config() -> TrainConfig:
    """The budget-conscious defaults described in the module docstring."""
    return TrainConfig(backbone="minilm", epochs=1, max_length=96, freeze_layers=5, evals_per_epoch=2, batch_size=64)


@dataclass
class FitConfig:
    """Options of :func:`fit` (and of ``frugal fit``).

    >>> FitConfig(folds=3).folds
    3
    """

    folds: int = 3
    """Cross-fitting folds (>= 2)."""
    max_depth: int = 3
    """Longest chain tried."""
    candidates: str = "both"
    """Thresholds tried per stage: ``grid`` (40 evenly spaced), ``quantiles`` (score quantiles) or ``both``."""
    grid_points: int = 40
    max_quantiles: int = 64
    models: list[str] | None = None
    """Candidate models (default: every model in the data)."""
    budget: float | None = None
    """Objective: highest accuracy with mean cost per query at most this (USD)."""
    target_accuracy: float | None = None
    """Objective: lowest cost with accuracy at least this."""
    caps: str | list[int] = "auto"
    """Output-token caps searched per model (see :mod:`shared_scorer.fitting.columns`): ``auto`` (each model's output
    quantiles), ``none``, or a list of token counts."""
    seed: int = 0
    signals: tuple[str, ...] = FEATURES
    """Signals the per-stage combiners may use (:mod:`shared_scorer.fitting.combine`); each is kept only where
    it raises out-of-fold AUROC. ``()``: the text scorer's calibrated score alone (FrugalGPT's scorer)."""
    router: bool = True
    """Also search router-started chains: a first stage gated by its query prior
    (:mod:`shared_scorer.fitting.routing`)."""
    embed: Callable[[Sequence[str]], np.ndarray] | None = None
    """Query embeddings for the prior and router (default: the local MiniLM encoder)."""
    selection: str = "robust"
    """How the deployed point is picked under a budget: ``robust`` (the point that holds across folds,
    :mod:`shared_scorer.fitting.robust`) or ``best`` (the most accurate in-sample point)."""
    design: str = "top-layer"
    """``top-layer``: cross-fit the top layer on cached frozen states (see :mod:`shared_scorer.fitting.crossfit`);
    ``full``: cross-fit ``DistilBertScorer.train`` itself (``train.freeze_layers`` lower layers frozen)."""
    train: TrainConfig = field(default_factory=default_train_config)
    top: TopLayerConfig = field(default_factory=TopLayerConfig)

    def check(self) -> None:
        if self.folds < 2:
            raise ConfigurationError(f"folds must be >= 2 for cross-fitting, got {self.folds}")
        if self.design not in ("top-layer", "full"):
            raise ConfigurationError(f"design must be 'top-layer' or 'full', got {self.design!r}")
        if self.budget is not None and self.target_accuracy is not None:
            raise ConfigurationError("give a budget or a target accuracy, not both")
        if self.selection not in ("robust", "best"):
            raise ConfigurationError(f"selection must be 'robust' or 'best', got {self.selection!r}")
        unknown = [s for s in self.signals if s not in FEATURES]
        if unknown:
            raise ConfigurationError(f"unknown signals {unknown}; known: {list(FEATURES)}")


@dataclass
class FitResult:
    """The fitted strategy, the out-of-fold table it was searched on, and the final scorer."""

    strategy: Strategy
    table: Table
    scorer: Any
    seconds: dict[str, float]
    groups: np.ndarray | None = None
    """The cross-fitting fold of each query of ``table`` (for :func:`~shared_scorer.fitting.robust.robust_select`)."""


def complete_rows(records: Sequence[Record], models: Sequence[str]) -> tuple[list[str], list[Record]]:
    """Query ids answered by every model (first-seen order) and the rows of those queries for those models."""
    by_query: dict[str, set[str]] = {}
    for r in records:
        by_query.setdefault(r.query_id, set()).add(r.model)
    wanted = set(models)
    ids = [q for q in dict.fromkeys(r.query_id for r in records) if wanted <= by_query[q]]
    if not ids:
        raise DataError(f"no query was answered by every model of {list(models)}")
    keep = set(ids)
    return ids, [r for r in records if r.query_id in keep and r.model in wanted]


def row_cost(record: Record, prices: Mapping[str, PriceSpec] | None) -> float:
    """The recorded ``cost_usd``, or tokens x price when ``prices`` lists the model and tokens are known."""
    if prices and record.model in prices and record.input_tokens is not None and record.output_tokens is not None:
        return float(resolve_price(record.model, prices).cost(record.input_tokens, record.output_tokens))
    return record.cost_usd


def build_table(
    records: Sequence[Record],
    models: Sequence[str],
    scores: Mapping[tuple[str, str], float],
    prices: Mapping[str, PriceSpec] | None = None,
) -> tuple[list[str], Table]:
    """The (query x model) table of scores, correctness and costs over queries every model answered."""
    ids, rows = complete_rows(records, models)
    where = {q: i for i, q in enumerate(ids)}
    col = {m: j for j, m in enumerate(models)}
    shape = (len(ids), len(models))
    s, c, k = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for r in rows:
        i, j = where[r.query_id], col[r.model]
        s[i, j] = scores[(r.query_id, r.model)]
        c[i, j] = r.correct
        k[i, j] = row_cost(r, prices)
    return ids, Table.of(list(models), s, c, k)


def distilbert_trainer(config: TrainConfig) -> Callable[[Sequence[Record], int], Any]:
    """``train(records, seed) -> DistilBertScorer`` with ``config`` (its seed replaced)."""
    from dataclasses import replace

    from shared_scorer.scoring.distilbert import DistilBertScorer

    def train(records: Sequence[Record], seed: int) -> Any:
        return DistilBertScorer.train(records, replace(config, seed=seed))

    return train


def score_rows(scorer: Any, rows: Sequence[Record]) -> np.ndarray:
    """The scorer's calibrated probabilities for recorded rows."""
    requests = [request_of(r) for r in rows]
    return np.asarray(scorer.score_batch(requests), dtype=float)


def cross_fit(
    records: Sequence[Record],
    folds: int,
    seed: int,
    train: Callable[[Sequence[Record], int], Any],
    progress: Callable[[str], None] | None = None,
    fold: Mapping[str, int] | None = None,
) -> dict[tuple[str, str], float]:
    """Out-of-fold scores: each query's rows scored by a scorer trained without that query."""
    ids = list(dict.fromkeys(r.query_id for r in records))
    if len(ids) < 2 * folds:
        raise DataError(f"{len(ids)} queries are too few for {folds}-fold cross-fitting")
    fold = fold or fold_of(ids, folds, seed)
    folds = len(set(fold.values()))
    scores: dict[tuple[str, str], float] = {}
    for f in range(folds):
        inside = [r for r in records if fold[r.query_id] != f]
        held_out = [r for r in records if fold[r.query_id] == f]
        if progress:
            progress(f"fold {f + 1}/{folds}: train on {len(inside)} rows, score {len(held_out)}")
        scorer = train(inside, seed + 1 + f)
        for r, v in zip(held_out, score_rows(scorer, held_out), strict=True):
            scores[(r.query_id, r.model)] = float(v)
    return scores


def fit(
    records: Sequence[Record],
    out: str | Path,
    config: FitConfig | None = None,
    *,
    prices: Mapping[str, PriceSpec] | None = None,
    price_table: Mapping[str, Mapping[str, str]] | None = None,
    train: Callable[[Sequence[Record], int], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Cross-fit the scorer, search chains and thresholds, train the final scorer; write ``out/``.

    ``out/strategy.json`` names ``out/scorer/``. ``train(records, seed)`` returns a scorer with
    ``score_batch`` and ``save`` (default: :class:`DistilBertScorer` with ``config.train``).
    """
    config = config or FitConfig()
    config.check()
    models = config.models or models_of(records)
    if not models:
        raise DataError("no rows to fit on")
    unknown = [m for m in models if m not in set(models_of(records))]
    if unknown:
        raise DataError(f"models {unknown} have no rows in the training data")
    ids, rows = complete_rows(records, models)
    if len(ids) < 2 * config.folds:
        raise DataError(f"{len(ids)} queries are too few for {config.folds}-fold cross-fitting")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    solved = {q: 0.0 for q in ids}
    for r in rows:
        solved[r.query_id] += r.correct
    fold = fold_of(ids, config.folds, config.seed, strata=solved)
    scorer: Any = None
    if train is None and config.design == "top-layer":
        oof, scorer, parts, logits = cross_fit_top_layer(
            rows, config.folds, config.seed, config.train, config.top, progress, fold=fold
        )
        seconds.update({f"scorer_{k}": v for k, v in parts.items()})
    else:
        trainer = train or distilbert_trainer(config.train)
        oof = cross_fit(rows, config.folds, config.seed, trainer, progress, fold=fold)
        logits = {key: float(logit(value)) for key, value in oof.items()}
        seconds["cross_fit"] = time.perf_counter() - started
        started = time.perf_counter()
        scorer = trainer(rows, config.seed)
        seconds["final_scorer"] = time.perf_counter() - started
    signals = SignalFit.run(ids, rows, models, fold, logits, scorer, config, progress)
    seconds.update(signals.seconds)
    ids, plain = build_table(rows, models, signals.first if signals.first is not None else oof, prices)
    table, cap_info = add_capped_columns(plain, ids, rows, choose_caps(rows, models, config.caps), prices)
    table, gates = signals.columns(table, ids, models)
    started = time.perf_counter()
    frontier: Frontier = search(
        table,
        max_depth=config.max_depth,
        candidates=config.candidates,  # type: ignore[arg-type]
        grid_points=config.grid_points,
        max_quantiles=config.max_quantiles,
    )
    seconds["search"] = time.perf_counter() - started
    if progress:
        progress(f"search: {len(frontier)} frontier points in {seconds['search']:.2f}s")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    scorer.save(folder / "scorer")
    info = {
        "models": list(models),
        "queries": len(ids),
        "folds": config.folds,
        "design": config.design if train is None else "custom trainer",
        "max_depth": config.max_depth,
        "candidates": config.candidates,
        "caps": cap_info["caps"],
        "caps_skipped": cap_info["skipped"],
        "cost_source": "prices x tokens" if prices else "recorded cost_usd",
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "scorer_metrics": getattr(scorer, "metrics", {}),
        "out_of_fold_auroc": _aurocs(plain, fold, ids),
        "signals": signals.report,
        "gates": gates,
        "no_better_than_chance": signals.chance,
        "single_models": {  # what a tier's target_accuracy "best_single" reads (adapters/tiers.py)
            m: {"accuracy": float(plain.correct[:, j].mean()), "cost_per_query": float(plain.costs[:, j].mean())}
            for j, m in enumerate(plain.models)
        },
    }
    strategy = Strategy.from_frontier(
        frontier,
        scorer="scorer",
        data_fingerprint=fingerprint(rows),
        budget=config.budget,
        target_accuracy=config.target_accuracy,
        prices=price_table,
        info=_finite(info),
    )
    groups = np.array([fold[q] for q in ids])
    if config.budget is not None and config.selection == "robust":
        point = robust_select(frontier, table, groups, config.budget)
        strategy = replace(
            strategy,
            chain=point.chain,
            thresholds=point.thresholds,
            expected={"accuracy": point.accuracy, "cost_per_query": point.cost},
            info={**strategy.info, "selection": "robust: best worst-fold accuracy within the budget on every fold"},
        )
    strategy.save(folder / "strategy.json")
    return FitResult(strategy, table, scorer, seconds, groups)


def _aurocs(table: Table, fold: Mapping[str, int], ids: Sequence[str]) -> dict[str, float | None]:
    """Each model's out-of-fold AUROC as a first stage, within folds (see :mod:`shared_scorer.fitting.combine`)."""
    from shared_scorer.fitting.combine import within_fold_auroc

    groups = np.array([fold[q] for q in ids])
    out: dict[str, float | None] = {}
    for j, m in enumerate(table.models):
        value = within_fold_auroc(table.correct[:, j], table.scores[:, j], groups)
        out[m] = None if math.isnan(value) else round(value, 4)
    return out


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, Decimal becomes str."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        return str(value)
    return value
