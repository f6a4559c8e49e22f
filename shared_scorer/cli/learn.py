"""The learning subcommands: ``frugal train-scorer | eval | collect | fit | bench`` (see :func:`add_parsers`).

frugal train-scorer --train FILE --out DIR
frugal eval --data FILE (--scorer DIR | --strategy PATH)
frugal collect --providers P.json --queries Q.jsonl --metric token_f1 --out recorded.jsonl
frugal fit --train train.jsonl --out strategy_dir [--budget USD | --target-accuracy X]
frugal bench --train train.jsonl --test test.jsonl --json report.json [--plot frontier.png]
frugal bench --strategy strategy_dir --test test.jsonl --json report.json   (no refit)

``eval`` replays through the LangChain adapter, imported only when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_scorer.cli._args import floats, fraction, names, non_negative_int, positive_float, positive_int
from shared_scorer.errors import ConfigurationError

if TYPE_CHECKING:
    from shared_scorer.fitting.data import Record
    from shared_scorer.scoring.base import Scorer

SubParsers = Any


def add_parsers(subparsers: SubParsers) -> None:
    """Register ``train-scorer``, ``eval``, ``collect``, ``fit`` and ``bench`` on the ``frugal`` subparsers."""
    add_train_scorer_parser(subparsers)
    add_eval_parser(subparsers)
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
    p.add_argument(
        "--providers", required=True, type=Path, help="providers JSON file (see shared_scorer.fitting.collect)"
    )
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
        p.add_argument(
            "--strategy",
            type=Path,
            help="report this saved strategy (file or folder, with its scorer/) on --test without refitting; "
            "--train is then not given",
        )
    objective = p.add_mutually_exclusive_group()
    objective.add_argument(
        "--budget", type=positive_float, help="the saved strategy: highest accuracy at mean USD per query <= this"
    )
    objective.add_argument(
        "--target-accuracy", type=fraction, help="the saved strategy: lowest cost at accuracy >= this"
    )
    p.add_argument(
        "--train",
        required=name == "fit",
        type=Path,
        help="recorded JSON Lines, train split" + ("" if name == "fit" else " (unless --strategy)"),
    )
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
    p.add_argument(
        "--signals",
        default="all",
        help="signals each stage's combiner may use, kept only where they raise out-of-fold AUROC: all (default), "
        "none (the text score alone), or a comma-separated subset of text,logprob,tokens,chars,prior,agree",
    )
    p.add_argument(
        "--no-router",
        dest="router",
        action="store_false",
        help="search fixed chains only (default: also chains whose first stage is gated by the query prior)",
    )
    p.add_argument(
        "--selection",
        choices=("robust", "best"),
        default="robust",
        help="the deployed point under --budget: robust (holds on every fold, default) or best (in-sample)",
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
    p.add_argument("--context", action="store_true", help=CONTEXT_HELP)
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_run_fit if name == "fit" else _run_bench)


CONTEXT_HELP = (
    "the scorer also reads each row's system prompt, profile and earlier turns (and, when scoring, the call's "
    "tool results); default: query and answer only"
)


def _config(args: argparse.Namespace) -> Any:
    from shared_scorer.fitting.fit import FitConfig, default_train_config

    train = default_train_config()
    train.backbone = args.backbone
    train.epochs = args.epochs
    train.max_length = args.max_length
    train.freeze_layers = args.freeze_layers
    train.per_model = args.per_model
    train.context = args.context
    train.num_threads = args.threads
    train.progress = not args.quiet
    from shared_scorer.fitting.crossfit import TopLayerConfig

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
        signals=_signals(args.signals, args.usage_signals),
        router=args.router,
        selection=args.selection,
    )


def _signals(text: str, usage: bool) -> tuple[str, ...]:
    from shared_scorer.scoring.combiner import FEATURES

    if text == "none":
        return ()
    chosen = FEATURES if text == "all" else tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in chosen if v not in FEATURES]
    if unknown:
        raise ConfigurationError(f"--signals: unknown {unknown}; choose from all, none, {','.join(FEATURES)}")
    return tuple(v for v in chosen if usage or v not in ("tokens", "chars"))


def _caps(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(f"--caps must be auto, none or comma-separated token counts, got {text!r}") from None


def _prices(path: Path | None) -> tuple[Any, Any]:
    if path is None:
        return None, None
    from shared_scorer.costs import load_prices, price_table

    prices = load_prices(path)  # validated: a bad file is a DataError naming it
    return prices, price_table(prices)


def _say(quiet: bool) -> Any:
    return None if quiet else (lambda message: print(f"frugal: {message}", file=sys.stderr, flush=True))


def _run_fit(args: argparse.Namespace) -> int:
    from shared_scorer.fitting.data import load_records
    from shared_scorer.fitting.fit import fit

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
    from shared_scorer.fitting.bench import bench, bench_strategy, plot
    from shared_scorer.fitting.data import load_records

    if args.strategy is not None and args.train is not None:
        raise ConfigurationError("--strategy reports a saved strategy without refitting; --train refits (give one)")
    if args.strategy is None and args.train is None:
        raise ConfigurationError("frugal bench needs --train (to fit) or --strategy")
    prices, table = _prices(args.prices)
    if args.strategy is not None:
        report = bench_strategy(args.strategy, load_records(args.test), prices=prices, progress=_say(args.quiet))
    else:
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
        source = args.strategy.parent.name if args.strategy is not None else args.train.parent.name
        plot(report, args.plot, title=f"{source}: fitted on train, measured on test")
    # the headline, and how the saved strategy (the one 'fit' would deploy) did on the test split
    print(json.dumps({**report["headline"], "strategy": report["strategy"]}, indent=2))
    return 0


def _run_collect(args: argparse.Namespace) -> int:
    from shared_scorer.fitting.collect import collect, load_providers, load_queries
    from shared_scorer.fitting.grading import resolve_metric

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


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "eval",
        help="replay a recorded dataset through FrugalChatModel over the replay server",
        description="Replay every query of a recorded dataset through a FrugalChatModel whose stages are "
        "ChatOpenAI clients of a local replay server; print each model's and the cascade's accuracy and cost.",
    )
    parser.add_argument("--data", required=True, type=Path, help="recorded JSON Lines file to replay (test split)")
    parser.add_argument(
        "--strategy",
        type=Path,
        help="a strategy saved by 'frugal fit' or 'frugal bench --out': its chain, thresholds and scorer",
    )
    parser.add_argument(
        "--scorer",
        help="a DistilBertScorer folder saved by 'frugal train-scorer', or 'oracle' to grade with the "
        "recorded labels (an upper bound, not a real scorer); not needed with --strategy",
    )
    parser.add_argument("--chain", type=names, help="comma-separated models, cheapest first (default: all, by cost)")
    parser.add_argument("--thresholds", type=floats, help="one per stage but the last (default: 0.5 each)")
    parser.add_argument("--prices", type=Path, help="prices JSON (default: prices.json beside the data's folder)")
    parser.add_argument("--limit", type=positive_int, help="replay only the first N queries")
    parser.add_argument("--concurrency", type=positive_int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    try:
        from frugal_langchain.evaluate import evaluate, format_table, single_model_figures
    except ImportError as exc:
        raise ConfigurationError(
            f"frugal eval replays through LangChain: pip install 'frugal-cascade[langchain]' ({exc})"
        ) from None
    from shared_scorer.costs import load_prices, price_pairs
    from shared_scorer.fitting.data import load_records, models_of

    records = load_records(args.data)
    prices_path = args.prices or args.data.resolve().parent.parent / "prices.json"
    prices = load_prices(prices_path) if prices_path.is_file() else {}
    if args.strategy is not None:
        from shared_scorer.strategy import Strategy

        strategy = Strategy.load(args.strategy)
        args.chain, args.thresholds = list(strategy.chain), list(strategy.thresholds)
        args.scorer = args.scorer or str(strategy.scorer_path())
        for model, pair in price_pairs(strategy.prices).items():
            prices.setdefault(model, pair)
    if not args.scorer:
        raise ConfigurationError("frugal eval needs --scorer or --strategy")
    chain = args.chain
    if not chain:
        singles = single_model_figures(records, {r.query_id for r in records}, models_of(records), prices)
        chain = [f.model for f in sorted(singles, key=lambda f: f.cost_per_query_usd)]
    thresholds = args.thresholds if args.thresholds is not None else [0.5] * (len(chain) - 1)
    scorer = _load_scorer(args.scorer, records)
    result = evaluate(records, chain, thresholds, scorer, prices, limit=args.limit, concurrency=args.concurrency)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _load_scorer(spec: str, records: Sequence[Record]) -> Scorer:
    if spec == "oracle":
        from shared_scorer.scoring.oracle import OracleScorer

        return OracleScorer(records)
    from shared_scorer.scoring.distilbert import DistilBertScorer

    return DistilBertScorer.load(spec)


def add_train_scorer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-scorer`` on an ``argparse`` sub-parser set; ``args.run`` is ``run_train_scorer``."""
    from shared_scorer.scoring.training import CALIBRATIONS, TrainConfig

    defaults = TrainConfig()
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train-scorer",
        help="fine-tune the DistilBERT scorer on recorded answers",
        description="Fine-tune, calibrate and save a DistilBertScorer; prints the validation metrics as JSON.",
    )
    parser.add_argument("--train", type=Path, required=True, help="recorded JSON Lines file")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--backbone", default=None, help="minilm (offline), tiny-random, a folder or a hub name")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--lr", type=positive_float, default=defaults.lr)
    parser.add_argument("--max-length", type=positive_int, default=defaults.max_length)
    parser.add_argument("--freeze-layers", type=non_negative_int, default=defaults.freeze_layers)
    parser.add_argument("--val-fraction", type=fraction, default=defaults.val_fraction)
    parser.add_argument("--seed", type=non_negative_int, default=defaults.seed)
    parser.add_argument("--calibration", choices=CALIBRATIONS, default=defaults.calibration)
    parser.add_argument("--num-threads", type=positive_int, default=None)
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--per-model", dest="per_model", action="store_true", help="one network per model")
    variant.add_argument("--shared", dest="per_model", action="store_false", help="one model-aware network")
    parser.set_defaults(per_model=defaults.per_model, run=run_train_scorer)
    parser.add_argument("--models", nargs="+", default=None, help="train for these candidate models only")
    parser.add_argument("--context", action="store_true", help=CONTEXT_HELP)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_train_scorer(args: argparse.Namespace) -> int:
    """Train with the parsed options, save to ``--out`` and print the validation metrics as JSON."""
    from shared_scorer.fitting.data import load_records
    from shared_scorer.scoring.distilbert import DistilBertScorer
    from shared_scorer.scoring.training import TrainConfig

    config = TrainConfig(
        backbone=args.backbone,
        per_model=args.per_model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        freeze_layers=args.freeze_layers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        calibration=args.calibration,
        num_threads=args.num_threads,
        models=args.models,
        progress=not args.no_progress,
        context=args.context,
    )
    scorer = DistilBertScorer.train(load_records(args.train), config)
    scorer.save(args.out)
    report = {
        "out": str(args.out),
        "variant": "per-model" if config.per_model else "shared",
        "train_seconds": round(float(scorer.info["train_seconds"]), 1),
        "validation": {
            model: {k: (None if math.isnan(v) else round(v, 4)) for k, v in figures.items()}
            for model, figures in scorer.metrics.items()
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
