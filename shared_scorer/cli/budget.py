"""``frugal report``: spend from a ledger::

frugal report --ledger URL_OR_PATH [--png OUT] [--json OUT] [--since-days N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from shared_scorer.cli._args import positive_float


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``report`` on the ``frugal`` command."""

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
    report.add_argument("--since-days", type=positive_float, help="only records of the last N days")
    report.set_defaults(run=_run_report)


def _existing_ledger(spec: str) -> Any:
    from shared_scorer.budget import open_ledger

    return open_ledger(spec, must_exist=True)  # a report never creates an empty ledger


def _run_report(args: argparse.Namespace) -> int:
    from shared_scorer.budget.report import build_report, format_table, write_png

    since = time.time() - args.since_days * 86400 if args.since_days is not None else None
    report = build_report(_existing_ledger(args.ledger).records(since))
    print(format_table(report))
    if args.png:
        print(f"\nchart written to {write_png(report, args.png)}")
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
    return 0
