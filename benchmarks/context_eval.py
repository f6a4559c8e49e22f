"""Does it matter who is asking? A constructed evaluation of a context-blind vs a context-aware scorer.

    python benchmarks/context_eval.py --train TRAIN --test TEST --json OUT
        [--unchanged-train T2 --unchanged-test T2] [--queries 500] [--test-queries 500]
        [--models M1,M2,...] [--backbone minilm] [--threads 2]

No public dataset has several models' answers rated by users with known profiles, so this one is
**constructed** from real recorded answers (TRAIN/TEST, e.g. ``shared/datasets/recorded/simpleqa``):

* Five caller profiles (:data:`PROFILES`), each a profile mapping (``plan``, ``channel``) and a system
  prompt that states a requirement on the form of the answer (none; a bare answer of at most 10 words;
  under 30 words; no Markdown; one sentence ending with a period).
* Each query gets one profile, deterministically: ``int(sha256("context-eval:" + query_id), 16) % 5``.
* An answer is correct for its caller iff it was correct in the recording (``correct >= 0.5``) **and** it
  meets the profile's requirement (:func:`meets`, exact rules below). Nothing else changes: same
  queries, answers, models and costs. The requirement is applied to the answers the models actually
  gave (they were never shown the system prompt), which is what makes the labels constructed.

The requirement rules, on ``words(answer)`` = the answer with ``*``, ``_``, backquotes and ``#``
replaced by spaces, split on whitespace:

* ``standard``: none.
* ``bare``: at most 10 words.
* ``brief``: fewer than 30 words.
* ``plain``: no Markdown: the answer contains none of ``**``, ``__``, a backquote, and no line starts
  (after spaces) with ``#`` or a bullet (``-``, ``*`` or ``+`` followed by a space).
* ``sentence``: the stripped answer ends with ``.``, has at least 4 words and no line break.

Both scorers are the same top-layer cross-fit (:func:`shared_scorer.fitting.crossfit.cross_fit_top_layer`,
``frugal fit``'s default training options) on the same train rows; the context-aware one is fitted with
``TrainConfig(context=True)`` and reads each row's system prompt and profile, the context-blind one does
not (``context=False``: what every scorer fitted before read). Reported per scorer: out-of-fold AUROC on
train (per model and their mean), AUROC on test, and the test frontier's headline
(:func:`shared_scorer.fitting.bench.headline`: chains and thresholds searched on the out-of-fold train
table, measured on test, against the model most accurate on train). ``difference`` gives aware minus
blind with a paired bootstrap interval (queries resampled, 200 draws) of the mean test AUROC.

``--unchanged-train/--unchanged-test`` repeats the comparison on an unchanged recorded dataset (labels as
recorded): a dataset whose rows carry a system prompt (``medmcqa_llama``) makes the context-aware scorer
read it; on one without any context (``simpleqa``) the two encodings are checked byte-identical
(``unchanged_without_context``), so every figure there is the same by construction.

Queries are subsampled deterministically (the first ``--queries`` train and ``--test-queries`` test query
ids in ``sha256("subsample:" + query_id)`` order) to keep a run to minutes on a CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._machine import machine  # noqa: E402
from shared_scorer.context import render_profile  # noqa: E402
from shared_scorer.fitting.bench import best_single, frontier_on, headline, single_models  # noqa: E402
from shared_scorer.fitting.crossfit import TopLayerConfig, cross_fit_top_layer  # noqa: E402
from shared_scorer.fitting.data import Record, load_records, models_of  # noqa: E402
from shared_scorer.fitting.fit import build_table, complete_rows, default_train_config, score_rows  # noqa: E402
from shared_scorer.fitting.search import search  # noqa: E402
from shared_scorer.scoring.training import TrainConfig, auroc  # noqa: E402

FOLDS = 3
SEED = 0
BOOTSTRAP = 200


@dataclass(frozen=True)
class Profile:
    """A caller profile: its name, what the adapters would pass as its profile, its system prompt, its rule."""

    name: str
    profile: Mapping[str, str]
    system: str
    meets: Callable[[str], bool]


def words(answer: str) -> list[str]:
    """The answer's words: ``*``, ``_``, backquotes and ``#`` replaced by spaces, split on whitespace."""
    return re.sub(r"[*_`#]", " ", answer).split()


_MARKDOWN_LINE = re.compile(r"(?m)^\s*(#|[-*+]\s)")


def has_markdown(answer: str) -> bool:
    """``**``, ``__`` or a backquote anywhere, or a line starting with ``#`` or a bullet (``-``/``*``/``+`` + space)."""
    return "**" in answer or "__" in answer or "`" in answer or _MARKDOWN_LINE.search(answer) is not None


def is_one_sentence(answer: str) -> bool:
    """Ends with ``.`` (stripped), at least 4 words, no line break."""
    text = answer.strip()
    return text.endswith(".") and len(words(text)) >= 4 and "\n" not in text


PROFILES: tuple[Profile, ...] = (
    Profile("standard", {"plan": "standard", "channel": "web"}, "You are a helpful assistant.", lambda a: True),
    Profile(
        "bare",
        {"plan": "api", "channel": "voice"},
        "Reply with the bare answer only (a name, a number or a date): at most 10 words, no explanation.",
        lambda a: len(words(a)) <= 10,
    ),
    Profile("brief", {"plan": "basic", "channel": "sms"}, "Answer in under 30 words.", lambda a: len(words(a)) < 30),
    Profile(
        "plain",
        {"plan": "pro", "channel": "widget"},
        "Our widget shows plain text: never use Markdown (no bold, headings, bullet lists or code).",
        lambda a: not has_markdown(a),
    ),
    Profile(
        "sentence",
        {"plan": "enterprise", "channel": "email"},
        "Always answer in one complete sentence that ends with a period.",
        is_one_sentence,
    ),
)


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def profile_of(query_id: str) -> Profile:
    """The query's caller profile: ``sha256("context-eval:" + query_id)`` modulo the number of profiles."""
    return PROFILES[_hash("context-eval:" + query_id) % len(PROFILES)]


def meets(profile: Profile, answer: str) -> bool:
    """Whether ``answer`` meets the profile's stated requirement (see the module docstring)."""
    return bool(profile.meets(answer))


def construct(records: Sequence[Record]) -> list[Record]:
    """The rows as the constructed dataset has them: each query's profile and system prompt set, and
    ``correct`` = 1 iff recorded correct (>= 0.5) and the answer meets the profile's requirement."""
    out = []
    for r in records:
        p = profile_of(r.query_id)
        label = float(r.correct >= 0.5 and meets(p, r.answer))
        out.append(replace(r, correct=label, system=p.system, profile=render_profile(p.profile)))
    return out


def subsample(records: Sequence[Record], n: int | None) -> list[Record]:
    """The rows of the first ``n`` query ids in ``sha256("subsample:" + query_id)`` order (all if ``n`` is None)."""
    ids = sorted(dict.fromkeys(r.query_id for r in records), key=lambda q: _hash("subsample:" + q))
    keep = set(ids if n is None else ids[:n])
    return [r for r in records if r.query_id in keep]


def label_summary(original: Sequence[Record], constructed: Sequence[Record]) -> dict[str, Any]:
    """Per profile and per model: rows, recorded accuracy, constructed accuracy."""
    out: dict[str, Any] = {"by_profile": {}, "by_model": {}}
    for key, group in (("by_profile", lambda r: profile_of(r.query_id).name), ("by_model", lambda r: r.model)):
        for name in dict.fromkeys(group(r) for r in original):
            index = [i for i, r in enumerate(original) if group(r) == name]
            out[key][name] = {
                "rows": len(index),
                "recorded_accuracy": round(float(np.mean([original[i].correct >= 0.5 for i in index])), 4),
                "constructed_accuracy": round(float(np.mean([constructed[i].correct for i in index])), 4),
            }
    return out


# ---------------------------------------------------------------- one scorer, fitted and measured


def _aurocs(rows: Sequence[Record], scores: Mapping[tuple[str, str], float], models: Sequence[str]) -> dict[str, Any]:
    per = {}
    for m in models:
        mine = [r for r in rows if r.model == m]
        labels = np.array([r.correct for r in mine])
        value = auroc(labels, np.array([scores[(r.query_id, r.model)] for r in mine]))
        per[m] = None if value is None or not np.isfinite(value) else round(float(value), 4)
    values = [v for v in per.values() if v is not None]
    return {"per_model": per, "mean": round(float(np.mean(values)), 4) if values else None}


def evaluate(
    train: Sequence[Record], test: Sequence[Record], models: Sequence[str], config: TrainConfig
) -> dict[str, Any]:
    """Cross-fit the scorer on ``train``, search the frontier there, measure both on ``test``."""
    started = time.perf_counter()
    _, rows = complete_rows(train, models)
    fitted = cross_fit_top_layer(rows, FOLDS, SEED, config, TopLayerConfig())
    oof, scorer, seconds = fitted[0], fitted[1], fitted[2]
    _, table = build_table(rows, models, oof)
    frontier = search(table, max_depth=3)
    _, test_rows = complete_rows(test, models)
    t0 = time.perf_counter()
    values = score_rows(scorer, test_rows)
    score_seconds = time.perf_counter() - t0
    test_scores = {(r.query_id, r.model): float(v) for r, v in zip(test_rows, values, strict=True)}
    _, test_table = build_table(test_rows, models, test_scores)
    singles = single_models(test_table)
    train_best = best_single(single_models(table))["model"]
    best = next(s for s in singles if s["model"] == train_best)
    points = frontier_on(test_table, frontier)
    return {
        "out_of_fold_auroc": _aurocs(rows, oof, models),
        "test_auroc": _aurocs(test_rows, test_scores, models),
        "headline": headline(points, best),
        "frontier": [
            {k: p[k] for k in ("chain", "thresholds", "accuracy", "cost_per_query", "budget")} for p in points
        ],
        "single_models": singles,
        "train_rows": len(rows),
        "test_rows": len(test_rows),
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "score_test": round(score_seconds, 1)},
        "seconds_total": round(time.perf_counter() - started, 1),
        "_scores": test_scores,
    }


def paired_bootstrap(
    test: Sequence[Record], models: Sequence[str], blind: Mapping[Any, float], aware: Mapping[Any, float]
) -> dict[str, Any]:
    """Mean test AUROC (over models) of aware minus blind, and its 95% interval over resampled queries."""
    _, rows = complete_rows(test, models)
    ids = list(dict.fromkeys(r.query_id for r in rows))
    where = {q: i for i, q in enumerate(ids)}
    shape = (len(ids), len(models))
    labels, a, b = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    col = {m: j for j, m in enumerate(models)}
    for r in rows:
        i, j = where[r.query_id], col[r.model]
        labels[i, j], a[i, j], b[i, j] = r.correct, aware[(r.query_id, r.model)], blind[(r.query_id, r.model)]

    def mean_diff(index: np.ndarray) -> float:
        diffs = []
        for j in range(len(models)):
            y = labels[index, j]
            if 0 < y.sum() < len(y):
                diffs.append(auroc(y, a[index, j]) - auroc(y, b[index, j]))
        return float(np.mean(diffs)) if diffs else float("nan")

    rng = np.random.default_rng(SEED)
    draws = [mean_diff(rng.integers(0, len(ids), len(ids))) for _ in range(BOOTSTRAP)]
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {
        "mean_test_auroc_aware_minus_blind": round(mean_diff(np.arange(len(ids))), 4),
        "bootstrap_95": [round(float(low), 4), round(float(high), 4)],
        "draws": BOOTSTRAP,
    }


def compare(
    train: Sequence[Record],
    test: Sequence[Record],
    models: Sequence[str],
    base: TrainConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Blind and aware scorers on the same rows, and their difference."""
    out: dict[str, Any] = {}
    for name, context in (("context_blind", False), ("context_aware", True)):
        log(f"{name}: fitting on {len(train)} rows, measuring on {len(test)}")
        out[name] = evaluate(train, test, models, replace(base, context=context))
    blind, aware = out["context_blind"].pop("_scores"), out["context_aware"].pop("_scores")
    out["difference"] = paired_bootstrap(test, models, blind, aware)
    return out


def same_encoding(records: Sequence[Record], base: TrainConfig) -> dict[str, Any]:
    """Whether a context-aware encoder gives exactly the context-blind encoding of every row."""
    from shared_scorer.scoring.backbone import load_backbone
    from shared_scorer.scoring.encoding import PairEncoder

    tokenizer = load_backbone(base.backbone, seed=SEED).tokenizer
    blind = PairEncoder(tokenizer, base.max_length, model_aware=True).encode_records(records)
    aware = PairEncoder(tokenizer, base.max_length, model_aware=True, with_context=True).encode_records(records)
    return {"rows": len(records), "identical": blind == aware, "rows_with_context": _with_context(records)}


def _with_context(records: Sequence[Record]) -> int:
    return sum(1 for r in records if r.system or r.profile or r.history)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--unchanged-train", action="append", default=[])
    parser.add_argument("--unchanged-test", action="append", default=[])
    parser.add_argument("--queries", type=int, default=500, help="train queries kept (0: all)")
    parser.add_argument("--test-queries", type=int, default=500, help="test queries kept (0: all)")
    parser.add_argument("--models", default="", help="comma-separated models (default: every model)")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if len(args.unchanged_train) != len(args.unchanged_test):
        parser.error("give --unchanged-train and --unchanged-test in pairs")
    log = (lambda _: None) if args.quiet else (lambda m: print(f"[context_eval] {m}", file=sys.stderr, flush=True))
    started = time.perf_counter()
    base = replace(default_train_config(), backbone=args.backbone, progress=False, num_threads=args.threads)
    if args.max_length:
        base = replace(base, max_length=args.max_length)
    n_train, n_test = args.queries or None, args.test_queries or None

    def load(path: str, n: int | None, models: list[str]) -> tuple[list[Record], list[str]]:
        rows = load_records(path)
        models = models or models_of(rows)
        return subsample([r for r in rows if r.model in set(models)], n), models

    chosen = [m for m in args.models.split(",") if m]
    train, models = load(args.train, n_train, chosen)
    test, _ = load(args.test, n_test, models)
    c_train, c_test = construct(train), construct(test)
    report: dict[str, Any] = {
        "benchmark": "context_eval",
        "constructed": True,
        "how_labels_are_made": (
            "correct = recorded correct (>= 0.5) AND the answer meets the requirement its caller's system prompt "
            "states; one of 5 profiles per query by sha256('context-eval:' + query_id) % 5; see the module docstring"
        ),
        "profiles": [{"name": p.name, "profile": render_profile(p.profile), "system": p.system} for p in PROFILES],
        "data": {"train": args.train, "test": args.test, "models": models},
        "subsample": {"train_queries": n_train, "test_queries": n_test},
        "training": {
            "design": "top-layer cross-fit",
            "folds": FOLDS,
            "seed": SEED,
            "backbone": base.backbone,
            "max_length": base.max_length,
        },
        "labels": {"train": label_summary(train, c_train), "test": label_summary(test, c_test)},
    }
    report["constructed_comparison"] = compare(c_train, c_test, models, base, log)
    report["unchanged"] = []
    for path_train, path_test in zip(args.unchanged_train, args.unchanged_test, strict=True):
        u_train, u_models = load(path_train, n_train, [])
        u_test, _ = load(path_test, n_test, u_models)
        entry: dict[str, Any] = {"train": path_train, "test": path_test, "models": u_models}
        if not _with_context(u_train) and not _with_context(u_test):
            log(f"{path_train}: no row has context; checking the encodings are identical")
            entry["unchanged_without_context"] = same_encoding([*u_train, *u_test], base)
        else:
            entry.update(compare(u_train, u_test, u_models, base, log))
        report["unchanged"].append(entry)
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    report["machine"] = machine()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if not args.quiet:
        print(json.dumps(_summary(report), indent=2))
    return report


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures worth printing: AUROCs and headlines of both scorers, per comparison."""

    def brief(part: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: {
                "oof_auroc_mean": part[name]["out_of_fold_auroc"]["mean"],
                "test_auroc_mean": part[name]["test_auroc"]["mean"],
                "accuracy_at_cost_fraction": part[name]["headline"]["accuracy_at_cost_fraction"],
                "savings_at_matched_accuracy": part[name]["headline"]["savings_at_matched_accuracy"],
            }
            for name in ("context_blind", "context_aware")
        } | {"difference": part["difference"]}

    out = {"constructed": brief(report["constructed_comparison"])}
    for entry in report["unchanged"]:
        out[entry["train"]] = entry.get("unchanged_without_context") or brief(entry)
    return out


if __name__ == "__main__":
    main()
