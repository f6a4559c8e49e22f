"""The ``frugal`` command.

    frugal replay-server --data FILE       serve recorded answers as an OpenAI-compatible endpoint
    frugal train-scorer --train FILE ...   train the DistilBERT scorer on recorded answers
    frugal eval --data FILE --scorer DIR   replay a dataset through FrugalChatModel; print the figures
    frugal collect | fit | bench           record answers, learn a strategy, measure it (shared_scorer.fit_cli)
    frugal report | serve                  spend from a ledger; the cascade as an OpenAI endpoint (budget.cli)
    frugal train-cache-verifier | cache-bench   the answer cache's verifier and figures (cache.cli)

One dispatch convention: every subcommand sets its handler with ``set_defaults(run=handler)`` and
:func:`main` calls ``args.run(args)``. The core stays framework-free: ``eval`` and ``serve`` import an
adapter only when they run, and name the extra to install when it is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared_scorer.data import Record
from shared_scorer.errors import ConfigurationError, FrugalError
from shared_scorer.scoring.base import Scorer


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An ``argparse`` type: ``convert(text)`` when ``ok`` holds, else argparse's usage error naming ``expected``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a number > 0")
fraction = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    parser.add_argument("--chain", type=_names, help="comma-separated models, cheapest first (default: all, by cost)")
    parser.add_argument("--thresholds", type=_floats, help="one per stage but the last (default: 0.5 each)")
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
    from shared_scorer.data import load_prices, load_records, models_of

    records = load_records(args.data)
    prices_path = args.prices or args.data.resolve().parent.parent / "prices.json"
    prices = load_prices(prices_path) if prices_path.is_file() else {}
    if args.strategy is not None:
        from shared_scorer.strategy import Strategy

        strategy = Strategy.load(args.strategy)
        args.chain, args.thresholds = list(strategy.chain), list(strategy.thresholds)
        args.scorer = args.scorer or str(strategy.scorer_path())
        for model, price in strategy.prices.items():
            prices.setdefault(model, (price["input_per_mtok"], price["output_per_mtok"]))
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


def build_parser() -> argparse.ArgumentParser:
    from shared_scorer.budget.cli import add_budget_parsers
    from shared_scorer.cache.cli import add_cache_parsers
    from shared_scorer.fit_cli import add_fit_parsers
    from shared_scorer.replay.cli import add_replay_parser
    from shared_scorer.scoring.cli import add_train_scorer_parser

    parser = argparse.ArgumentParser(prog="frugal", description="FrugalGPT cascades for LangChain and LlamaIndex.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_replay_parser(subparsers)
    add_train_scorer_parser(subparsers)
    _add_eval_parser(subparsers)
    add_fit_parsers(subparsers)
    add_budget_parsers(subparsers)
    add_cache_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``frugal`` subcommand. A bad argument is argparse's usage error (exit 2); a
    :class:`FrugalError` or a file that cannot be read or written is one line
    ``frugal <command>: error: ...`` on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except FrugalError as exc:
        print(f"frugal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command could not read or write: the operator's to fix, not a bug
        print(f"frugal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
