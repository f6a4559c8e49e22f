"""This project's default fit side by side with its peers on one recorded dataset; writes JSON and a plot.

    python benchmarks/peers.py --train TRAIN --test TEST --json OUT [--plot PNG] [--out DIR] [--quiet]

Every method is fitted on TRAIN only and measured on TEST. A method whose points are chosen on train
(a frontier of chains and thresholds, or of router thresholds) is reported by its *test frontier*: each
train-frontier point's configuration re-measured on test. Each method's headline is
:func:`shared_scorer.fitting.bench.headline` of its test frontier against the test split's best single
model (the most accurate, the cheaper on a tie): accuracy at 10/20/50% of that model's cost, savings at
matched accuracy, savings within one point of it.

Methods (``methods`` in the JSON; ``default`` names this project's):

* ``frugal-default``: ``bench`` with the default :class:`FitConfig` (``frugal bench``'s figures exactly; its
  MiniLM query embeddings come from this run's cache).
* ``frugalgpt-reference``: the same scorer from the text alone (no usage or other signals), fixed chains
  (no router), the 40-point threshold grid, no output caps (``FitConfig(candidates="grid", caps="none")``).
* ``logprob-threshold``: score = exp(recorded ``logprob``) of each answer (0 where a row has none: it then
  always escalates), every chain of up to 3 models, a 41-point grid on [0, 1]. Only where the data has
  ``logprob`` on its rows; otherwise it is listed under ``skipped``.
* ``routellm-router``: per model, a logistic regression on the query's MiniLM embedding predicts whether
  the model answers correctly; a query goes to the cheapest model (by mean train cost) whose predicted
  probability is >= tau, else to the model with the highest one. tau sweeps a 101-point grid on [0, 1].
* ``naive-cascade``: per model, a logistic regression on the frozen MiniLM embeddings of the query and of
  the answer (concatenated) is the scorer; chains and thresholds are searched as in the reference.
* ``single:<model>``: each model alone (one point). ``oracle``: per query the cheapest correct model, else
  the cheapest (one point, an upper bound).

The router and the naive cascade choose their points on out-of-fold train predictions (3 folds by query,
as ``fit`` does for its scorer), then predict test with models trained on every train query. MiniLM
embeddings are computed once per distinct text within the run. Costs are the recorded ``cost_usd``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._machine import machine  # noqa: E402
from shared_scorer.errors import ConfigurationError  # noqa: E402
from shared_scorer.fitting.bench import bench, best_single, frontier_on, headline, single_models  # noqa: E402
from shared_scorer.fitting.crossfit import TopLayerConfig, fold_of  # noqa: E402
from shared_scorer.fitting.data import Record, load_records, models_of  # noqa: E402
from shared_scorer.fitting.fit import FitConfig, build_table, complete_rows  # noqa: E402
from shared_scorer.fitting.frontier import pareto_mask  # noqa: E402
from shared_scorer.fitting.search import Table, search  # noqa: E402
from shared_scorer.jsonl import iter_json_lines  # noqa: E402

DEFAULT = "frugal-default"
FOLDS = 3
SEED = 0
LOGPROB_GRID = np.linspace(0.0, 1.0, 41)
TAU_GRID = np.linspace(0.0, 1.0, 101)

Embed = Callable[[Sequence[str]], np.ndarray]
FitBench = Callable[[Sequence[Record], Sequence[Record], Path, FitConfig], Mapping[str, Any]]
"""``fit_bench(train, test, out, config)``: fit on train (writing ``out``), return ``bench``'s report."""


@dataclass
class Split:
    """One recorded split: its rows, and each row's recorded ``logprob`` where it has one."""

    records: list[Record]
    logprobs: dict[tuple[str, str], float]


def load_split(path: str | Path) -> Split:
    """Read a recorded JSON Lines file; ``logprob`` is read from the raw rows (an optional field)."""
    logprobs = {}
    for _, row in iter_json_lines(path):
        value = row.get("logprob") if isinstance(row, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            logprobs[(str(row["query_id"]), str(row["model"]))] = float(value)
    return Split(load_records(path), logprobs)


class CachedEmbedder:
    """Embeds each distinct text once per run (``embed`` returns one row per text given)."""

    def __init__(self, embed: Embed) -> None:
        self._embed = embed
        self._rows: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
        if missing:
            for text, row in zip(missing, np.asarray(self._embed(missing), dtype=np.float32), strict=True):
                self._rows[text] = row
        return np.stack([self._rows[t] for t in texts])


def minilm_embed() -> Embed:
    """The local all-MiniLM-L6-v2 encoder of :mod:`shared_scorer.embeddings` (loaded on first use)."""
    from shared_scorer.embeddings import MiniLMEmbedder

    holder: list[MiniLMEmbedder] = []

    def embed(texts: Sequence[str]) -> np.ndarray:
        if not holder:
            holder.append(MiniLMEmbedder())
        return holder[0].embed(list(texts))

    return embed


@dataclass
class Tables:
    """A split as (query x model) arrays over the queries every model answered, with its rows by key."""

    ids: list[str]
    rows: dict[tuple[str, str], Record]
    table: Table

    @classmethod
    def of(cls, records: Sequence[Record], models: Sequence[str]) -> Tables:
        ids, rows = complete_rows(records, models)
        _, table = build_table(rows, models, {(r.query_id, r.model): 0.0 for r in rows})
        return cls(ids, {(r.query_id, r.model): r for r in rows}, table)

    def scored(self, scores: np.ndarray) -> Table:
        """The same table with ``scores`` (queries x models, clipped to [0, 1])."""
        t = self.table
        return Table.of(t.models, np.clip(scores, 0.0, 1.0), t.correct, t.costs)

    def column(self, model: str, pick: Callable[[Record], Any]) -> list[Any]:
        return [pick(self.rows[(q, model)]) for q in self.ids]


def _known(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options this version of :class:`FitConfig` has (``signals``, ``router`` and ``embed`` are newer)."""
    names = {f.name for f in fields(FitConfig)}
    return {k: v for k, v in options.items() if k in names}


def default_config(embed: Embed) -> FitConfig:
    """``frugal bench``'s defaults; its query embeddings (where it takes any) come from this run's cache."""
    return FitConfig(**_known({"embed": embed}))


def reference_config() -> FitConfig:
    """FrugalGPT's reference: the text-only scorer (no usage or other signals), fixed chains (no router),
    the 40-point grid, no output caps."""
    text_only = TopLayerConfig(usage_signals=False)
    extra = _known({"signals": (), "router": False})
    return FitConfig(candidates="grid", grid_points=40, caps="none", top=text_only, **extra)


def cascade_method(train: Table, test: Table, candidates: Any) -> list[dict[str, Any]]:
    """Search every chain of up to 3 models on ``train``; each frontier point re-measured on ``test``."""
    frontier = search(train, max_depth=3, candidates=candidates)
    return frontier_on(test, frontier)


def logprob_scores(tables: Tables, logprobs: Mapping[tuple[str, str], float]) -> np.ndarray:
    """exp(logprob) per (query, model); 0 where the row has none."""
    out = np.zeros(tables.table.scores.shape)
    for j, m in enumerate(tables.table.models):
        for i, q in enumerate(tables.ids):
            value = logprobs.get((q, m))
            out[i, j] = math.exp(min(value, 0.0)) if value is not None else 0.0
    return out


def _logistic(x: np.ndarray, y: np.ndarray, apply: np.ndarray) -> np.ndarray:
    """P(correct) from a logistic regression (sklearn's defaults); the base rate when y has one class."""
    labels = (y >= 0.5).astype(int)
    if labels.min() == labels.max():
        return np.full(len(apply), float(labels.mean()))
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny or separable folds
        model = LogisticRegression(max_iter=1000).fit(x, labels)
    return np.asarray(model.predict_proba(apply)[:, 1], dtype=float)


def per_model_probabilities(
    train_x: Sequence[np.ndarray], train_y: np.ndarray, test_x: Sequence[np.ndarray], ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per model ``j``, P(correct | features): out-of-fold on train (``FOLDS`` folds by query) and on test
    from a model fitted on every train query. ``train_x[j]``/``test_x[j]`` hold one row per query."""
    of = fold_of(list(ids), FOLDS, SEED)
    fold = np.array([of[q] for q in ids])
    oof = np.zeros(train_y.shape)
    test = np.zeros((len(test_x[0]), train_y.shape[1]))
    for j in range(train_y.shape[1]):
        for f in range(FOLDS):
            inside, held = fold != f, fold == f
            if held.any():
                oof[held, j] = _logistic(train_x[j][inside], train_y[inside, j], train_x[j][held])
        test[:, j] = _logistic(train_x[j], train_y[:, j], test_x[j])
    return oof, test


def route(p: np.ndarray, tau: float, order: Sequence[int]) -> np.ndarray:
    """Per query, the first model of ``order`` (cheapest first) with ``p >= tau``, else the highest ``p``."""
    chosen = np.argmax(p, axis=1)
    decided = np.zeros(len(p), dtype=bool)
    for j in order:
        take = ~decided & (p[:, j] >= tau)
        chosen[take] = j
        decided |= take
    return chosen


def _routed(table: Table, chosen: np.ndarray) -> tuple[float, float]:
    rows = np.arange(table.n)
    return float(table.correct[rows, chosen].mean()), float(table.costs[rows, chosen].mean())


def router_method(train: Table, p_train: np.ndarray, test: Table, p_test: np.ndarray) -> list[dict[str, Any]]:
    """Sweep tau on train's out-of-fold predictions; each Pareto tau re-measured on test."""
    order = list(np.argsort(train.costs.mean(axis=0), kind="stable"))
    on_train = [_routed(train, route(p_train, float(tau), order)) for tau in TAU_GRID]
    keep = pareto_mask(np.array([c for _, c in on_train]), np.array([a for a, _ in on_train]))
    out = []
    for k in sorted(int(i) for i in keep):
        tau = float(TAU_GRID[k])
        chosen = route(p_test, tau, order)
        accuracy, cost = _routed(test, chosen)
        share = np.bincount(chosen, minlength=len(test.models)) / test.n
        out.append(
            {
                "tau": tau,
                "accuracy": accuracy,
                "cost_per_query": cost,
                "routed": {m: float(s) for m, s in zip(test.models, share, strict=True)},
                "budget": on_train[k][1],
                "train_accuracy": on_train[k][0],
            }
        )
    return out


def oracle_point(table: Table) -> dict[str, Any]:
    """Per query the cheapest correct model, else the cheapest model."""
    correct = table.correct >= 0.5
    costs = np.where(correct, table.costs, np.inf)
    chosen = np.where(correct.any(axis=1), np.argmin(costs, axis=1), np.argmin(table.costs, axis=1))
    accuracy, cost = _routed(table, chosen)
    return {"accuracy": accuracy, "cost_per_query": cost}


def _entry(frontier: list[dict[str, Any]], best: Mapping[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    return {"headline": headline(frontier, best), "frontier": frontier, "seconds": round(seconds, 2), **extra}


def compare(
    train: Split,
    test: Split,
    out: Path,
    *,
    fit_bench: FitBench | None = None,
    embed: Embed | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit every method on ``train``, measure it on ``test``; the report described in the module docstring."""
    say = progress or (lambda _: None)
    started, cpu = time.perf_counter(), time.process_time()
    if fit_bench is None:

        def fit_bench(tr: Sequence[Record], te: Sequence[Record], folder: Path, config: FitConfig) -> Any:
            return bench(tr, te, folder, config, progress=progress)

    embedder = CachedEmbedder(embed or minilm_embed())
    models = models_of(train.records)
    tr, te = Tables.of(train.records, models), Tables.of(test.records, models)
    singles = single_models(te.table)
    best = best_single(singles)
    methods: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}

    for name, config in ((DEFAULT, default_config(embedder)), ("frugalgpt-reference", reference_config())):
        say(f"{name}: fit on train, measure on test")
        t0 = time.perf_counter()
        report = fit_bench(train.records, test.records, out / name, config)
        methods[name] = _entry(
            list(report["frontier"]),
            best,
            time.perf_counter() - t0,
            out_of_fold_auroc=report.get("out_of_fold_auroc"),
        )

    t0 = time.perf_counter()
    if any(key in train.logprobs for key in tr.rows):
        say("logprob-threshold: search every chain of up to 3 models on exp(logprob)")
        frontier = cascade_method(
            tr.scored(logprob_scores(tr, train.logprobs)),
            te.scored(logprob_scores(te, test.logprobs)),
            [LOGPROB_GRID] * len(models),
        )
        methods["logprob-threshold"] = _entry(frontier, best, time.perf_counter() - t0)
    else:
        skipped["logprob-threshold"] = "no row of the train split has a 'logprob'"

    say(f"embedding queries and answers with MiniLM ({len(tr.ids) + len(te.ids)} queries)")
    t0 = time.perf_counter()
    q_train = embedder(tr.column(models[0], lambda r: r.query))
    q_test = embedder(te.column(models[0], lambda r: r.query))
    a_train = [embedder(tr.column(m, lambda r: r.answer)) for m in models]
    a_test = [embedder(te.column(m, lambda r: r.answer)) for m in models]
    embed_seconds = time.perf_counter() - t0

    say("routellm-router: logistic regression per model on query embeddings")
    t0 = time.perf_counter()
    p_train, p_test = per_model_probabilities([q_train] * len(models), tr.table.correct, [q_test] * len(models), tr.ids)
    methods["routellm-router"] = _entry(
        router_method(tr.table, p_train, te.table, p_test), best, time.perf_counter() - t0
    )

    say("naive-cascade: logistic regression per model on (query, answer) embeddings")
    t0 = time.perf_counter()
    s_train, s_test = per_model_probabilities(
        [np.hstack([q_train, a]) for a in a_train], tr.table.correct, [np.hstack([q_test, a]) for a in a_test], tr.ids
    )
    frontier = cascade_method(tr.scored(s_train), te.scored(s_test), "grid")
    methods["naive-cascade"] = _entry(frontier, best, time.perf_counter() - t0)

    for single in singles:
        point = {"accuracy": single["accuracy"], "cost_per_query": single["cost_per_query"]}
        methods[f"single:{single['model']}"] = _entry([point], best, 0.0)
    methods["oracle"] = _entry([oracle_point(te.table)], best, 0.0)
    return {
        "default": DEFAULT,
        "methods": methods,
        "skipped": skipped,
        "models": models,
        "train_queries": tr.table.n,
        "test_queries": te.table.n,
        "best_single": dict(best),
        "seconds": {
            "embed": round(embed_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
            "cpu_total": round(time.process_time() - cpu, 2),  # this process's CPU time, all threads
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # wall time on a shared machine
        },
    }


def plot(report: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Every method's test frontier (its Pareto points as a step line) on one chart; cost as a fraction of
    the best single model's cost (log scale). Needs matplotlib (the ``report`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigurationError("--plot needs matplotlib: pip install 'frugal-cascade[report]'") from exc
    best_cost = float(report["best_single"]["cost_per_query"]) or 1.0
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, (name, method) in enumerate(report["methods"].items()):
        points = method["frontier"]
        xs = np.array([p["cost_per_query"] for p in points]) / best_cost
        ys = np.array([p["accuracy"] for p in points])
        if name.startswith("single:") or name == "oracle":
            ax.scatter(xs, ys, marker="*" if name == "oracle" else "o", color="k" if name == "oracle" else "C7")
            ax.annotate(name, (xs[0], ys[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            continue
        keep = pareto_mask(xs, ys)
        width = 2.2 if name == report["default"] else 1.2
        ax.step(xs[keep], ys[keep], where="post", marker=".", lw=width, color=f"C{k}", label=name)
    ax.set_xscale("log")
    ax.axvline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel(f"mean cost per query / best single model's ({report['best_single']['model']})")
    ax.set_ylabel("accuracy (test)")
    ax.set_title(title or "fitted on train, measured on test")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    def pct(value: float | None) -> float | None:
        return None if value is None else round(100 * value, 1)

    return {
        name: {
            **{f"acc@{f}": pct(v) for f, v in m["headline"]["accuracy_at_cost_fraction"].items()},
            "savings_matched": pct(m["headline"]["savings_at_matched_accuracy"]),
            "savings_1pt": pct(m["headline"]["savings_within_one_point"]),
        }
        for name, m in report["methods"].items()
    }


def main(argv: Sequence[str] | None = None, *, fit_bench: FitBench | None = None, embed: Embed | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="recorded JSON Lines, train split")
    parser.add_argument("--test", type=Path, required=True, help="recorded JSON Lines, test split")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--plot", type=Path, help="also draw every method's test frontier to this PNG")
    parser.add_argument("--out", type=Path, help="folder for the fitted strategies (default: beside --json)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    out = args.out or args.json.parent / f"{args.json.stem}-fits"
    report = compare(load_split(args.train), load_split(args.test), out, fit_bench=fit_bench, embed=embed, progress=say)
    report = {"train": str(args.train), "test": str(args.test), **report, "machine": machine()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(report, args.plot, title=f"{args.train.parent.name}: fitted on train, measured on test")
    print(json.dumps({"json": str(args.json), "headline": _summary(report), "seconds": report["seconds"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
