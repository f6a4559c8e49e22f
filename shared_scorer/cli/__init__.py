"""The ``frugal`` command.

    frugal replay-server --data FILE       serve recorded answers as an OpenAI-compatible endpoint (cli.replay)
    frugal train-scorer --train FILE ...   train the DistilBERT scorer on recorded answers (cli.learn)
    frugal eval --data FILE --scorer DIR   replay a dataset through FrugalChatModel; print the figures (cli.learn)
    frugal collect | fit | bench           record answers, learn a strategy, measure it (cli.learn)
    frugal advise                          what each model is worth to the cascade (cli.advise)
    frugal report                          spend from a ledger (cli.budget)
    frugal serve                           the cascade as an OpenAI-compatible endpoint (cli.serve)
    frugal train-cache-verifier | cache-bench   the answer cache's verifier and figures (cli.cache)

One dispatch convention: every module registers its subcommands with ``add_parsers(subparsers)``, each
subcommand sets its handler with ``set_defaults(run=handler)`` and :func:`main` calls ``args.run(args)``.
The core stays framework-free: ``cli/`` is the only place in ``shared_scorer`` that imports an adapter,
only when ``eval`` or ``serve`` runs, naming the extra to install when it is missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared_scorer.cli import advise, budget, cache, learn, replay, serve
from shared_scorer.errors import FrugalError


def build_parser() -> argparse.ArgumentParser:
    """The ``frugal`` parser: every subcommand, in the order ``frugal --help`` lists them."""
    parser = argparse.ArgumentParser(prog="frugal", description="FrugalGPT cascades for LangChain and LlamaIndex.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    replay.add_parsers(subparsers)
    learn.add_parsers(subparsers)
    advise.add_parsers(subparsers)
    budget.add_parsers(subparsers)
    serve.add_parsers(subparsers)
    cache.add_parsers(subparsers)
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
