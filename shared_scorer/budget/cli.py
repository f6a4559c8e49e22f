"""``frugal report`` and ``frugal serve``::

frugal report --ledger URL_OR_PATH [--png OUT] [--json OUT] [--since-days N]
frugal serve --strategy PATH --keys KEYS.json --stages-base-url URL [--ledger URL] [--limit SPEC ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from shared_scorer.errors import ConfigurationError

_LIMIT = re.compile(r"^(tenant|user|overall)(?::([^=/:]+))?=([0-9]+(?:\.[0-9]+)?)(?:/(hour|day|month|total))?$")


def parse_limit(text: str) -> Any:
    """``tenant=50/day``, ``tenant:acme=100/month``, ``user=5/hour``, ``overall=500`` (no period: total)."""
    from shared_scorer.budget import Limit

    match = _LIMIT.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"bad limit {text!r}: expected SCOPE[:TENANT]=USD[/PERIOD], e.g. tenant=50/day, tenant:acme=100/month, "
            "overall=500 (SCOPE tenant|user|overall, PERIOD hour|day|month|total)"
        )
    scope, tenant, usd, period = match.groups()
    return Limit(scope, usd, None if period in (None, "total") else period, tenant=tenant)  # type: ignore[arg-type]


def add_budget_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``report`` and ``serve`` on the ``frugal`` command."""
    report = subparsers.add_parser(
        "report",
        help="spend by model, stage, tenant, user and day from a ledger",
        description="Read a ledger's records and print spend by model, stage, tenant, user and day, escalation "
        "rates, cache hits and their saving, and the estimated saving against always calling the last stage.",
    )
    report.add_argument(
        "--ledger",
        required=True,
        help="sqlite:///REL.db or sqlite:////ABS.db (SQLAlchemy style), a SQLite file path or redis://HOST:PORT/DB",
    )
    report.add_argument("--png", type=Path, help="also draw the figures as a PNG chart here")
    report.add_argument("--json", type=Path, help="also write the figures as JSON here")
    report.add_argument("--since-days", type=float, help="only records of the last N days")
    report.set_defaults(run=_run_report)

    serve = subparsers.add_parser(
        "serve",
        help="serve a saved strategy as an OpenAI-compatible /v1/chat/completions endpoint",
        description="Serve a strategy saved by 'frugal fit' over HTTP (OpenAI chat completions, streaming too). "
        "Each API key in --keys maps to a budget scope; requests without a valid key are refused.",
    )
    serve.add_argument("--strategy", required=True, type=Path, help="strategy JSON saved by 'frugal fit'")
    serve.add_argument("--keys", required=True, type=Path, help='JSON: {"KEY": {"tenant": "acme", "user": "..."}}')
    serve.add_argument("--stages-base-url", required=True, help="OpenAI-compatible endpoint serving the stage models")
    serve.add_argument("--stages-api-key-env", default="OPENAI_API_KEY", help="env variable with the stages' API key")
    serve.add_argument("--ledger", default="frugal-ledger.db", help="budget ledger (default: ./frugal-ledger.db)")
    serve.add_argument("--limit", type=parse_limit, action="append", default=[], help="e.g. tenant=50/day (repeat)")
    serve.add_argument("--on-budget", choices=["stop", "raise"], default="stop")
    serve.add_argument("--max-tokens", type=int, default=1024, help="output cap per stage call (bounds reservations)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_run_serve)


def _existing_ledger(spec: str) -> Any:
    from shared_scorer.budget import open_ledger

    return open_ledger(spec, must_exist=True)  # a report never creates an empty ledger


def _run_report(args: argparse.Namespace) -> int:
    from shared_scorer.report import build_report, format_table, write_png

    since = time.time() - args.since_days * 86400 if args.since_days is not None else None
    report = build_report(_existing_ledger(args.ledger).records(since))
    print(format_table(report))
    if args.png:
        print(f"\nchart written to {write_png(report, args.png)}")
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
        from langchain_openai import ChatOpenAI

        from frugal_langchain import FrugalChatModel
    except ImportError as exc:
        raise ConfigurationError(f"frugal serve needs 'frugal-cascade[serve,langchain]': {exc}") from None
    from frugal_langchain.serve import load_keys, make_app
    from shared_scorer.budget import Budget, LedgerCostTracker, open_ledger
    from shared_scorer.strategy import Strategy

    keys = load_keys(args.keys)
    strategy = Strategy.load(args.strategy)
    ledger = open_ledger(args.ledger)
    budget = Budget(ledger, args.limit) if args.limit else None
    api_key = os.environ.get(args.stages_api_key_env) or "unused"

    def factory(budget: Budget | None) -> Any:
        stages = {
            model: ChatOpenAI(model=model, base_url=args.stages_base_url, api_key=api_key, max_tokens=args.max_tokens)
            for model in dict.fromkeys(strategy.provider_models)  # "model@N" entries: from_strategy caps them
        }
        return FrugalChatModel.from_strategy(
            strategy, stages, cost_tracker=LedgerCostTracker(ledger), budget=budget, on_budget=args.on_budget
        )

    uvicorn.run(make_app(factory, keys, budget), host=args.host, port=args.port)
    return 0
