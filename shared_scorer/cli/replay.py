"""Command line of the replay server: ``frugal replay-server`` and ``python -m shared_scorer.server``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from shared_scorer.errors import FrugalError
from shared_scorer.server.replay import ReplayServer

DEFAULT_PORT = 8765


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the replay server's options to ``parser``."""
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        help="a recorded JSON Lines file (repeatable)",
    )
    parser.add_argument("--scenarios", metavar="FILE", help="a JSON file of tool-call scenarios")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port, 0 for any (default: %(default)s)")
    parser.add_argument(
        "--hang-seconds",
        type=float,
        default=30.0,
        help="how long a 'hang' fault waits (default: %(default)s)",
    )
    parser.set_defaults(run=serve_forever_cli)
    return parser


def add_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``replay-server`` subcommand on the main CLI's ``add_subparsers()`` object.

    The subcommand's ``run`` default is :func:`serve_forever_cli`.
    """
    parser = subparsers.add_parser(
        "replay-server",
        help="serve recorded answers over a local OpenAI-compatible API",
        description="Serve recorded answers over a local OpenAI-compatible API until Ctrl-C.",
    )
    return configure_parser(parser)


def serve_forever_cli(
    args: argparse.Namespace,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Start a server from parsed arguments, print its base URL and serve until Ctrl-C or SIGTERM.

    ``ready`` is set once the URL is printed; setting ``stop`` ends serving too (for embedding, tests).
    """
    try:
        server = ReplayServer.from_files(
            *args.data,
            scenarios_path=args.scenarios,
            host=args.host,
            port=args.port,
            hang_seconds=args.hang_seconds,
        )
        server.start()
    except (FrugalError, OSError, ValueError) as exc:
        print(f"frugal replay-server: error: {exc}", file=sys.stderr)
        return 2
    stopped = stop if stop is not None else threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    # Ctrl-C and SIGTERM both stop it; SIGINT is set explicitly because a process started in the
    # background of a non-interactive shell inherits SIGINT ignored (and would never stop on Ctrl-C)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(server.base_url, flush=True)
        print(
            f"replaying {len(server.records)} records of {len(server.models)} models "
            f"({', '.join(server.models)}), {len(server.scenarios)} scenarios; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if ready is not None:
            ready.set()
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shared_scorer.server``: the ``replay-server`` subcommand on its own."""
    parser = configure_parser(
        argparse.ArgumentParser(
            prog="python -m shared_scorer.server",
            description="Serve recorded answers over a local OpenAI-compatible chat-completions API.",
        )
    )
    args = parser.parse_args(argv)
    return int(args.run(args))
