"""``frugal serve``: a saved strategy behind an OpenAI-compatible ``/v1/chat/completions`` endpoint::

frugal serve --strategy PATH --keys KEYS.json --stages-base-url URL [--framework langchain|llamaindex]
             [--ledger URL] [--limit SPEC ...] [--max-tokens N] [--stage-timeout S] [--stage-retries N]
             [--max-body-bytes N] [--answer-cache SPEC] [--admin-key KEY]
             [--tiers TIERS.json] [--host HOST] [--port PORT] [--workers N]

The framework-free part is :mod:`shared_scorer.server.gateway`; the backend (``frugal_langchain.serve`` or
``frugal_llamaindex.serve``, by ``--framework``) is imported only when the command runs, naming the extras
to install when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

from shared_scorer.errors import ConfigurationError

FRAMEWORKS = {"langchain": "frugal_langchain.serve", "llamaindex": "frugal_llamaindex.serve"}
"""``--framework``: the module whose ``serve_backend(strategy, ...)`` builds the backend."""

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


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``serve`` on the ``frugal`` command."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a saved strategy as an OpenAI-compatible /v1/chat/completions endpoint",
        description="Serve a strategy saved by 'frugal fit' over HTTP (OpenAI chat completions, streaming too). "
        "Each API key in --keys maps to a budget scope; requests without a valid key are refused.",
    )
    serve.add_argument("--strategy", required=True, type=Path, help="strategy JSON saved by 'frugal fit'")
    serve.add_argument("--keys", required=True, type=Path, help='JSON: {"KEY": {"tenant": "acme", "user": "..."}}')
    serve.add_argument("--stages-base-url", required=True, help="OpenAI-compatible endpoint serving the stage models")
    serve.add_argument(
        "--framework",
        choices=sorted(FRAMEWORKS),
        default="langchain",
        help="the adapter that calls the stages: FrugalChatModel over ChatOpenAI (langchain, the default) or "
        "FrugalLLM over OpenAILike (llamaindex); the same cascade either way",
    )
    serve.add_argument("--stages-api-key-env", default="OPENAI_API_KEY", help="env variable with the stages' API key")
    serve.add_argument(
        "--ledger",
        default="frugal-ledger.db",
        help="budget ledger: a SQLite file or redis://[:PASSWORD@]HOST:PORT/DB (default: ./frugal-ledger.db)",
    )
    serve.add_argument("--limit", type=parse_limit, action="append", default=[], help="e.g. tenant=50/day (repeat)")
    serve.add_argument("--on-budget", choices=["stop", "raise"], default="stop")
    serve.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=None,
        help="output cap for stages the strategy leaves uncapped (its model@N caps are kept; default: none)",
    )
    serve.add_argument(
        "--stage-timeout",
        type=_positive_float,
        default=60.0,
        help="seconds a stage call may take before it fails and the query escalates (default: 60)",
    )
    serve.add_argument(
        "--stage-retries",
        type=int,
        choices=[0, 1, 2],
        default=1,
        help="retries of a failed stage call before the query escalates (default: 1)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=1 << 20,
        help="largest request body accepted, else 413 (default: 1048576)",
    )
    serve.add_argument(
        "--answer-cache",
        metavar="PATH_OR_URL",
        help="answer cache: a SQLite file, or a Chroma server http://HOST:PORT; entries are scoped by key",
    )
    serve.add_argument(
        "--answer-cache-exact",
        action="store_true",
        help="answer cache: exact matches only (no embedding model is loaded)",
    )
    serve.add_argument(
        "--admin-key",
        help="serve the read-only operator's dashboard at /dashboard to this key (default: $FRUGAL_ADMIN_KEY, "
        "better than a flag others can see in ps); without one, no dashboard is served",
    )
    serve.add_argument(
        "--tiers",
        type=Path,
        help='JSON: {"tiers": {"free": {"budget": 0.002}, "paid": {"target_accuracy": "best_single"}}, "tenants": '
        '{"acme": {"tier": "paid", "share_cache_within_tenant": true}}}: each tier a point of the strategy\'s '
        "frontier; a key's \"tier\" in --keys, else its tenant's, picks it (default: the strategy's own point)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes serving the port (uvicorn workers, default: 1); each builds its own cascade, "
        "so give them a shared --ledger (redis://... or a SQLite file) and --answer-cache",
    )
    serve.set_defaults(run=_run_serve)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def load_backend_module(framework: str) -> Any:
    """The serve module of ``framework`` (see :data:`FRAMEWORKS`), with an error naming the extras to
    install when it, ``starlette`` or ``uvicorn`` is missing."""
    import importlib

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        return importlib.import_module(FRAMEWORKS[framework])
    except ImportError as exc:
        raise ConfigurationError(
            f"frugal serve --framework {framework} needs 'frugal-cascade[serve,{framework}]': {exc}"
        ) from None


def _run_serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _run_workers(args)
    import uvicorn

    app = build_app(args)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def build_app(args: argparse.Namespace) -> Any:
    """The ASGI app ``frugal serve`` serves for ``args`` (its parsed options), built once per worker."""
    module = load_backend_module(args.framework)

    from shared_scorer.budget import Budget, LedgerCostTracker, open_ledger
    from shared_scorer.server.dashboard import ADMIN_KEY_ENV, serve_routes
    from shared_scorer.server.gateway import load_keys, make_app, open_answer_cache, read_keys
    from shared_scorer.strategy import Strategy

    keys = load_keys(args.keys)
    strategy = Strategy.load(args.strategy)
    ledger = open_ledger(args.ledger)
    budget = Budget(ledger, args.limit) if args.limit else None
    cache = open_answer_cache(args.answer_cache, semantic=not args.answer_cache_exact) if args.answer_cache else None
    admin_key = args.admin_key or os.environ.get(ADMIN_KEY_ENV)
    dashboard = serve_routes(admin_key, ledger, chain=strategy.chain, thresholds=strategy.thresholds, api_keys=keys)
    backend = module.serve_backend(
        strategy,
        base_url=args.stages_base_url,
        api_key=os.environ.get(args.stages_api_key_env) or "unused",
        timeout_s=args.stage_timeout,
        max_retries=args.stage_retries,
        max_tokens=args.max_tokens,
        cost_tracker=LedgerCostTracker(ledger),
        budget=budget,
        on_budget=args.on_budget,
        answer_cache=cache,
        **tier_options(getattr(args, "tiers", None), read_keys(args.keys)),
    )
    app = make_app(backend, read_keys(args.keys), budget, max_body_bytes=args.max_body_bytes, routes=dashboard)
    app.add_middleware(ReplicaHeader)
    return app


def tier_options(path: Path | None, keys: dict[str, Any]) -> dict[str, Any]:
    """``from_strategy``'s ``tiers=`` and ``tenants=`` from a ``--tiers`` file (none without one); a key naming a
    tier the file lacks is a :class:`ConfigurationError` here, before anything is served."""
    from shared_scorer.adapters.tiers import parse_tenants, parse_tiers
    from shared_scorer.server.gateway import key_tier

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"tiers file {str(path)!r}: cannot read it as JSON: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"tiers", "tenants"}:
            raise ConfigurationError(f"tiers file {str(path)!r}: expected an object with 'tiers' and 'tenants'")
    tiers = parse_tiers(data.get("tiers"))
    parse_tenants(data.get("tenants"), list(tiers))
    for key, value in keys.items():
        tier = key_tier(value, f"keys file, key {key[:4]}...")
        if tier is not None and tier not in tiers:
            raise ConfigurationError(
                f"keys file, key {key[:4]}...: tier {tier!r} is not one of the tiers {sorted(tiers)} (--tiers)"
            )
    return {name: data[name] for name in ("tiers", "tenants") if data.get(name)}


# ------------------------------------------------------------------------------- --workers N

SERVE_ARGS_ENV = "FRUGAL_SERVE_ARGS"
"""How ``frugal serve --workers N`` hands its options to each worker process: JSON, see :func:`encode_args`."""
SERVE_FAILURES_ENV = "FRUGAL_SERVE_FAILURES"
"""``PID:FILE``: where a worker that cannot build its app writes why (one line), and the command it stops."""


def _run_workers(args: argparse.Namespace) -> int:
    """``--workers N``: uvicorn's supervisor starts N processes on the one port, each building its app by
    :func:`app_from_env`. What would fail in every worker is checked here once (the extras, the keys
    file, the strategy, a ledger every worker would hold alone)."""
    load_backend_module(args.framework)
    import uvicorn

    from shared_scorer.server.gateway import load_keys
    from shared_scorer.strategy import Strategy

    if str(args.ledger).startswith("memory:"):
        raise ConfigurationError(
            f"frugal serve --workers {args.workers} --ledger {args.ledger}: each worker would keep its own budget; "
            "give them one ledger (redis://HOST:PORT/DB, or a SQLite file)"
        )
    load_keys(args.keys)
    Strategy.load(args.strategy)
    with tempfile.TemporaryDirectory(prefix="frugal-serve-") as folder:
        failures = Path(folder) / "failures.txt"
        os.environ[SERVE_ARGS_ENV], os.environ[SERVE_FAILURES_ENV] = encode_args(args), f"{os.getpid()}:{failures}"
        try:
            uvicorn.run(f"{__name__}:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers)
        finally:
            os.environ.pop(SERVE_ARGS_ENV, None)
            os.environ.pop(SERVE_FAILURES_ENV, None)
        if failures.is_file():  # the worker stopped uvicorn's supervisor, which would restart it forever
            first = failures.read_text(encoding="utf-8", errors="replace").splitlines()[0]
            raise ConfigurationError(f"frugal serve --workers {args.workers}: a worker could not start: {first}")
    return 0


def app_from_env() -> Any:
    """uvicorn's app factory in each worker of ``frugal serve --workers N``: the app of the options the
    command left in ``$FRUGAL_SERVE_ARGS``."""
    text = os.environ.get(SERVE_ARGS_ENV)
    if not text:
        raise ConfigurationError(f"${SERVE_ARGS_ENV} is not set: start the workers with 'frugal serve --workers N'")
    try:
        return build_app(decode_args(text))
    except Exception as exc:  # told to the command, which stops its workers and exits with it
        parent, _, failures = os.environ.get(SERVE_FAILURES_ENV, "").partition(":")
        if failures:
            with open(failures, "a", encoding="utf-8") as handle:
                handle.write(f"{type(exc).__name__}: {exc}".replace("\n", " ") + "\n")
            if parent.isdigit() and int(parent) == os.getppid():  # not restarted in a loop: stop the command
                os.kill(int(parent), signal.SIGTERM)
        raise


def encode_args(args: argparse.Namespace) -> str:
    """``frugal serve``'s parsed options as JSON (paths and limits tagged; the handler left out).

    >>> decode_args(encode_args(argparse.Namespace(strategy=Path("s.json"), limit=[parse_limit("user=5/day")])))
    Namespace(strategy=PosixPath('s.json'), limit=[Limit(scope='user', usd=Decimal('5'), period='day', tenant=None, user=None)])
    """  # noqa: E501
    from shared_scorer.budget import Limit

    def tagged(value: Any) -> Any:
        if isinstance(value, Path):
            return {"$path": str(value)}
        if isinstance(value, Limit):
            return {"$limit": [value.scope, str(value.usd), value.period, value.tenant, value.user]}
        raise TypeError(type(value).__name__)

    options = {}
    for name, value in vars(args).items():
        if callable(value):
            continue
        try:
            options[name] = json.loads(json.dumps(value, default=tagged))
        except TypeError as exc:
            message = f"frugal serve --workers: option {name!r} ({exc}) cannot be passed to the workers"
            raise ConfigurationError(message) from None
    return json.dumps(options)


def decode_args(text: str) -> argparse.Namespace:
    """The options :func:`encode_args` wrote."""
    from shared_scorer.budget import Limit

    def untagged(obj: dict[str, Any]) -> Any:
        if set(obj) == {"$path"}:
            return Path(obj["$path"])
        if set(obj) == {"$limit"}:
            scope, usd, period, tenant, user = obj["$limit"]
            return Limit(scope, usd, period, tenant=tenant, user=user)
        return obj

    return argparse.Namespace(**json.loads(text, object_hook=untagged))


class ReplicaHeader:
    """ASGI middleware: every response says which process answered (``x-frugal-replica: PID``), so that
    an operator (or a test) behind a load balancer can tell replicas and workers apart."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = (b"x-frugal-replica", str(os.getpid()).encode())

        async def send_tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_tagged)
