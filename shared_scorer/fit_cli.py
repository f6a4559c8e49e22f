"""The ``frugal collect | fit | bench`` subcommands (registered by :func:`add_fit_parsers`).

frugal collect --providers P.json --queries Q.jsonl --metric token_f1 --out recorded.jsonl
frugal fit --train train.jsonl --out strategy_dir [--budget USD | --target-accuracy X]
frugal bench --train train.jsonl --test test.jsonl --json report.json [--plot frontier.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from shared_scorer.cli import fraction, non_negative_int, positive_float, positive_int
from shared_scorer.errors import ConfigurationError

SubParsers = Any


def add_fit_parsers(subparsers: SubParsers) -> None:
    """Register ``collect``, ``fit`` and ``bench`` on the ``frugal`` command's subparsers."""
    _add_collect(subparsers)
    _add_fit(subparsers, "fit")
    _add_fit(subparsers, "bench")


def _add_collect(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "collect",
        help="ask every provider every labelled query; write recorded JSON Lines",
        description="Send every query of a labelled JSON Lines file (query, reference, optional system) to "
        "every provider of a providers file, grade each answer with a metric, and write the recorded schema. "
        "Resumable: rerun the same command after an interruption and no answered query is paid for twice.",
    )
    p.add_argument("--providers", required=True, type=Path, help="providers JSON file (see shared_scorer.collect)")
    p.add_argument("--queries", required=True, type=Path, help="labelled queries, JSON Lines")
    p.add_argument(
        "--metric",
        default="normalized_containment",
        help="exact_match, normalized_containment, token_f1, numeric_match, multiple_choice, or module:function",
    )
    p.add_argument("--out", required=True, type=Path, help="recorded JSON Lines file (also the resume store)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight per provider")
    p.add_argument("--retries", type=non_negative_int, default=4, help="retries per request (exponential backoff)")
    p.add_argument("--timeout", type=positive_float, default=120.0, help="seconds per request")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_collect)


def _add_fit(subparsers: SubParsers, name: str) -> None:
    if name == "fit":
        p = subparsers.add_parser(
            "fit",
            help="learn the chain, thresholds and scorer from recorded answers; save a Strategy",
            description="Cross-fit the DistilBERT scorer, search every ordered chain of up to --max-depth models "
            "and each stage's threshold, and save OUT/strategy.json (with the whole frontier) beside OUT/scorer/.",
        )
        p.add_argument("--out", required=True, type=Path, help="folder for strategy.json and scorer/")
    else:
        p = subparsers.add_parser(
            "bench",
            help="fit on a train split, report single models and the cascade frontier on a test split",
            description="Fit on TRAIN only (as 'frugal fit'), then measure every frontier point and every single "
            "model on TEST; write the JSON report (single_models, frontier, headline) and optionally a plot.",
        )
        p.add_argument("--test", required=True, type=Path, help="recorded JSON Lines, test split")
        p.add_argument("--json", required=True, type=Path, help="where to write the report")
        p.add_argument("--plot", type=Path, help="also draw the frontier to this PNG (needs matplotlib)")
        p.add_argument("--out", type=Path, help="folder for the fitted strategy (default: beside --json)")
    objective = p.add_mutually_exclusive_group()
    objective.add_argument(
        "--budget", type=positive_float, help="the saved strategy: highest accuracy at mean USD per query <= this"
    )
    objective.add_argument(
        "--target-accuracy", type=fraction, help="the saved strategy: lowest cost at accuracy >= this"
    )
    p.add_argument("--train", required=True, type=Path, help="recorded JSON Lines, train split")
    p.add_argument("--prices", type=Path, help="price costs from tokens with this prices JSON (default: cost_usd)")
    p.add_argument("--models", help="comma-separated candidate models (default: all)")
    p.add_argument("--max-depth", type=positive_int, default=3, help="longest chain tried (default 3)")
    p.add_argument("--folds", type=positive_int, default=3, help="cross-fitting folds (default 3)")
    p.add_argument(
        "--design",
        choices=("top-layer", "full"),
        default="top-layer",
        help="top-layer: train the top encoder layer + head on cached frozen states (fast, default); "
        "full: cross-fit DistilBertScorer.train itself (slow on CPU)",
    )
    p.add_argument("--top-epochs", type=positive_int, default=5, help="epochs of the top-layer design")
    p.add_argument(
        "--no-usage-signals",
        dest="usage_signals",
        action="store_false",
        help="score from the text alone (default: also the answer's billed output tokens and length)",
    )
    p.add_argument("--top-lr", type=positive_float, default=3e-4, help="learning rate of the top layer (head: 1e-3)")
    p.add_argument("--candidates", choices=("grid", "quantiles", "both"), default="both")
    p.add_argument(
        "--caps",
        default="auto",
        help="output-token caps searched per model: auto (each model's output quantiles), none, or e.g. 1000,3000",
    )
    p.add_argument("--backbone", default="minilm", help="scorer backbone (minilm, tiny-random, folder, hub name)")
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--max-length", type=positive_int, default=96)
    p.add_argument("--freeze-layers", type=non_negative_int, default=5)
    p.add_argument("--per-model", action="store_true", help="one scorer network per model")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_run_fit if name == "fit" else _run_bench)


def _config(args: argparse.Namespace) -> Any:
    from shared_scorer.fit import FitConfig, default_train_config

    train = default_train_config()
    train.backbone = args.backbone
    train.epochs = args.epochs
    train.max_length = args.max_length
    train.freeze_layers = args.freeze_layers
    train.per_model = args.per_model
    train.num_threads = args.threads
    train.progress = not args.quiet
    from shared_scorer.crossfit import TopLayerConfig

    return FitConfig(
        design=args.design,
        top=TopLayerConfig(epochs=args.top_epochs, lr=args.top_lr, usage_signals=args.usage_signals),
        folds=args.folds,
        max_depth=args.max_depth,
        candidates=args.candidates,
        caps=args.caps if args.caps in ("auto", "none") else _caps(args.caps),
        models=[m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
        budget=args.budget,
        target_accuracy=args.target_accuracy,
        seed=args.seed,
        train=train,
    )


def _caps(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(f"--caps must be auto, none or comma-separated token counts, got {text!r}") from None


def _prices(path: Path | None) -> tuple[Any, Any]:
    if path is None:
        return None, None
    from shared_scorer.data import load_prices

    prices = load_prices(path)  # validated: a bad file is a DataError naming it
    table = {m: {"input_per_mtok": i, "output_per_mtok": o} for m, (i, o) in prices.items()}
    return prices, table


def _say(quiet: bool) -> Any:
    return None if quiet else (lambda message: print(f"frugal: {message}", file=sys.stderr, flush=True))


def _run_fit(args: argparse.Namespace) -> int:
    from shared_scorer.data import load_records
    from shared_scorer.fit import fit

    prices, table = _prices(args.prices)
    result = fit(
        load_records(args.train), args.out, _config(args), prices=prices, price_table=table, progress=_say(args.quiet)
    )
    s = result.strategy
    print(
        json.dumps(
            {
                "strategy": str(s.path),
                "chain": list(s.chain),
                "thresholds": list(s.thresholds),
                "expected": s.expected,
                "frontier_points": len(s.frontier),
            },
            indent=2,
        )
    )
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from shared_scorer.bench import bench, plot
    from shared_scorer.data import load_records

    prices, table = _prices(args.prices)
    out = args.out or args.json.with_name(args.json.stem + "-strategy")
    report = bench(
        load_records(args.train),
        load_records(args.test),
        out,
        _config(args),
        prices=prices,
        price_table=table,
        progress=_say(args.quiet),
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, args.plot, title=f"{args.train.parent.name}: fitted on train, measured on test")
    print(json.dumps(report["headline"], indent=2))
    return 0


def _run_collect(args: argparse.Namespace) -> int:
    from shared_scorer.collect import collect, load_providers, load_queries
    from shared_scorer.metrics import resolve_metric

    summary = collect(
        load_providers(args.providers),
        load_queries(args.queries),
        resolve_metric(args.metric),
        args.out,
        concurrency=args.concurrency,
        retries=args.retries,
        timeout=args.timeout,
        progress=not args.quiet,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
