"""``frugal advise``: what each model is worth to the cascade (see :mod:`shared_scorer.fitting.advise`).

frugal advise --train train.jsonl --test test.jsonl --json advise.json [--plot advise.png]
              [--price model=IN,OUT ...] [--candidate new_model.jsonl] [--max-depth K] [--scorer oracle]
"""

from __future__ import annotations

import argparse
import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from shared_scorer.cli._args import non_negative_int, positive_int


def price(text: str) -> tuple[str, tuple[str, str]]:
    """``model=IN,OUT`` (USD per million input and output tokens) -> ``(model, (IN, OUT))``."""
    model, _, pair = text.rpartition("=")
    parts = pair.split(",")
    try:
        ok = bool(model.strip()) and len(parts) == 2 and all(Decimal(p).is_finite() and Decimal(p) >= 0 for p in parts)
    except InvalidOperation:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"expected model=IN,OUT (USD per million tokens, >= 0), got {text!r}")
    return model.strip(), (parts[0].strip(), parts[1].strip())


def add_parsers(subparsers: Any) -> None:
    """Register ``advise`` on the ``frugal`` subparsers."""
    p = subparsers.add_parser(
        "advise",
        help="what each model is worth: depth curve, leave-one-model-out, a candidate model, price what-ifs",
        description="Fit on TRAIN as 'frugal bench' does, then on TEST: the frontier per chain depth, what the "
        "frontier loses without each model (ranked; the ones whose removal costs nothing are named to drop), "
        "a candidate model's value with a bootstrap interval, all under --price what-ifs without new calls.",
    )
    p.add_argument("--train", required=True, type=Path, help="recorded JSON Lines, train split")
    p.add_argument("--test", required=True, type=Path, help="recorded JSON Lines, test split")
    p.add_argument("--json", required=True, type=Path, help="where to write the report")
    p.add_argument("--plot", type=Path, help="also draw the depth curves and model values to this PNG")
    p.add_argument("--out", type=Path, help="folder for the fitted strategy (default: beside --json)")
    p.add_argument(
        "--price",
        type=price,
        action="append",
        default=[],
        metavar="MODEL=IN,OUT",
        help="what-if price in USD per million input,output tokens (repeatable); recomputes everything",
    )
    p.add_argument("--candidate", type=Path, help="a new model's answers (same schema) on some of the queries")
    p.add_argument("--max-depth", type=positive_int, help="deepest chain of the depth curve (default: all models)")
    p.add_argument("--search-depth", type=positive_int, default=3, help="the fit's exact search depth (default 3)")
    p.add_argument("--deep-grid", type=positive_int, default=6, help="thresholds per stage beyond --search-depth")
    p.add_argument("--resamples", type=positive_int, default=200, help="bootstrap resamples of the candidate")
    p.add_argument(
        "--scorer",
        choices=("fit", "oracle"),
        default="fit",
        help="fit: cross-fit the scorer as bench does (default); oracle: the labels as scores (an upper bound)",
    )
    p.add_argument("--prices", type=Path, help="price costs from tokens with this prices JSON (default: cost_usd)")
    p.add_argument("--models", help="comma-separated models (default: all)")
    p.add_argument("--folds", type=positive_int, default=3)
    p.add_argument("--design", choices=("top-layer", "full"), default="top-layer")
    p.add_argument("--top-epochs", type=positive_int, default=5)
    p.add_argument("--top-lr", type=float, default=3e-4)
    p.add_argument("--no-usage-signals", dest="usage_signals", action="store_false")
    p.add_argument("--candidates", choices=("grid", "quantiles", "both"), default="both")
    p.add_argument("--caps", default="auto", help="output-token caps: auto, none, or e.g. 1000,3000")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--max-length", type=positive_int, default=96)
    p.add_argument("--freeze-layers", type=non_negative_int, default=5)
    p.add_argument("--per-model", action="store_true")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared_scorer.cli.learn import _config, _prices, _say
    from shared_scorer.errors import ConfigurationError
    from shared_scorer.fitting.advise import advise, plot, table
    from shared_scorer.fitting.data import load_records

    overrides: dict[str, tuple[str, str]] = {}
    for model, pair in args.price:
        if model in overrides:
            raise ConfigurationError(f"--price {model} is given twice")
        overrides[model] = pair
    prices, price_table = _prices(args.prices)
    # advise searches fixed chains (no router) over first-stage scores: every signal, the fit's own search
    fixed = {"max_depth": args.search_depth, "budget": None, "target_accuracy": None, "router": False}
    defaults = {"signals": "all", "selection": "best", "context": False}
    config = _config(argparse.Namespace(**{**defaults, **vars(args), **fixed}))
    report = advise(
        load_records(args.train),
        load_records(args.test),
        args.out or args.json.with_name(args.json.stem + "-strategy"),
        config,
        prices=prices,
        price_table=price_table,
        overrides=overrides,
        candidate=load_records(args.candidate) if args.candidate else None,
        oracle=args.scorer == "oracle",
        max_depth=args.max_depth,
        deep_grid_points=args.deep_grid,
        resamples=args.resamples,
        seed=args.seed,
        progress=_say(args.quiet),
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, args.plot, title=f"{args.train.parent.name}: what each model is worth (test split)")
    print(table(report))
    return 0
