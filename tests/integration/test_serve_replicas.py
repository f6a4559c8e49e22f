"""Two ``frugal serve`` replicas over one Redis ledger and one Chroma answer cache, driven at once.

Replica A is ``frugal serve --workers 2`` (two uvicorn worker processes on one port), replica B a second
``frugal serve`` process on another port: three processes, each with its own cascade and DistilBERT
scorer (a tiny random one, saved next to the strategy), their stages served by the replay server. What
must hold across them: a user's budget (the ledger's exact Decimal figures), a cached answer stored
through one replica is served by the other for the same scope only, and every charge lands on the
scope of the key that made it. In CI a missing ``redis-server`` or ``chroma`` fails, never skips.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from shared_scorer import TokenPrice
from shared_scorer.budget.ledger import SpendRecord
from shared_scorer.budget.redis_ledger import RedisLedger
from shared_scorer.budget.redis_server import redis_server, redis_server_binary
from shared_scorer.cache.chroma_server import chroma_binary, chroma_server
from shared_scorer.server.replay import ReplayServer
from shared_scorer.server.replicas import serve_processes, tiny_strategy
from shared_scorer.server.testing import make_record, replay_server
from tests.conftest import require

SMALL, BIG = "replica-small", "replica-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
CACHED = "Who wrote Middlemarch?"
BUDGET_QUERIES = [f"Budget question {i}: what is {i} times {i + 7}?" for i in range(60)]
RECORDS = [
    record
    for query in (CACHED, *BUDGET_QUERIES)
    for record in (
        make_record(query, f"The answer to: {query}", model=SMALL, input_tokens=12, output_tokens=3),
        make_record(query, f"The long answer to: {query}", model=BIG, input_tokens=12, output_tokens=9, correct=0.0),
    )
]
KEYS = {
    "sk-ann": {"tenant": "acme", "user": "ann"},  # the budget
    "sk-bob": {"tenant": "acme", "user": "bob"},  # the cached answer's owner
    "sk-cat": {"tenant": "acme", "user": "cat"},  # same tenant, another user
    "sk-zed": {"tenant": "globex", "user": "zed"},  # another tenant
}
USER_LIMIT = Decimal("0.0004")
"""Each user's daily limit: about 26 answers at the actual cost, 2 reservations at their worst case."""
ANSWER_COST = TokenPrice(*PRICES[SMALL]).cost(12, 3)  # the first stage accepts everything (threshold 0)


@dataclass
class Replicas:
    a: str
    b: str
    ledger: RedisLedger
    replay: ReplayServer


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    for package in ("uvicorn", "starlette", "redis", "chromadb", "langchain_openai"):
        require(importlib.util.find_spec(package) is not None, f"{package} is not installed")
    require(redis_server_binary() is not None, "redis-server is not installed (Debian: apt-get install redis-server)")
    require(chroma_binary() is not None, "the 'chroma' command is not installed (pip install chromadb)")
    folder = tmp_path_factory.mktemp("replicas")
    (folder / "keys.json").write_text(json.dumps(KEYS))
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(max_workers=1) as pool:  # the scorer trains while the servers start
            trained = pool.submit(tiny_strategy, folder, RECORDS[:8], chain=[SMALL, BIG], thresholds=[0.0],
                                  prices=PRICES)  # fmt: skip
            ledger_url = stack.enter_context(redis_server())
            cache_url = stack.enter_context(chroma_server())
            replay = stack.enter_context(replay_server(RECORDS))
            strategy = trained.result()
        common = ["--strategy", str(strategy), "--keys", str(folder / "keys.json"),
                  "--stages-base-url", replay.base_url, "--ledger", ledger_url, "--answer-cache", cache_url,
                  "--limit", f"user={USER_LIMIT}/day", "--max-tokens", "50", "--stage-retries", "0"]  # fmt: skip
        env = {"OPENAI_API_KEY": "unused", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
        with (folder / "a.log").open("w") as log_a, (folder / "b.log").open("w") as log_b:
            try:
                arg_lists = [[*common, "--workers", "2"], common]  # A: two workers on one port; B: one process
                with serve_processes(arg_lists, key="sk-ann", env=env, logs=[log_a, log_b], cwd=folder) as (a, b):
                    yield Replicas(a, b, RedisLedger(ledger_url), replay)
            finally:
                for name in ("a.log", "b.log"):
                    print(f"--- replica {name}:\n" + (folder / name).read_text(errors="replace")[-3000:])


@dataclass
class Answer:
    """One request's outcome: 200 with its trail, or the error status and message; which worker answered."""

    status: int
    replica: str
    text: str | None = None
    trail: dict[str, Any] | None = None
    message: str = ""


def ask(base_url: str, key: str, query: str) -> Answer:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="frugal", messages=[{"role": "user", "content": query}]
        )
    except openai.APIStatusError as exc:
        message = str((exc.body or {}).get("message", "")) if isinstance(exc.body, dict) else str(exc)
        return Answer(exc.status_code, exc.response.headers.get("x-frugal-replica", ""), message=message)
    reply = raw.parse()
    trail = (reply.model_extra or {})["frugal"]
    return Answer(200, raw.headers.get("x-frugal-replica", ""), reply.choices[0].message.content, trail)


def records_of(ledger: RedisLedger, tenant: str, user: str) -> list[SpendRecord]:
    return [r for r in ledger.records() if (r.tenant, r.user) == (tenant, user)]


def spent(ledger: RedisLedger, tenant: str, user: str) -> Decimal:
    return sum((r.cost_usd for r in records_of(ledger, tenant, user)), Decimal(0))


def test_a_cached_answer_stored_through_one_replica_is_served_by_the_other_for_that_scope_only(replicas):
    first = ask(replicas.a, "sk-bob", CACHED)
    assert first.status == 200 and first.text == f"The answer to: {CACHED}"
    assert first.trail is not None and first.trail["cache_hit"] is None
    assert Decimal(first.trail["cost_usd"]) == ANSWER_COST == Decimal("0.0000105")
    calls = replicas.replay.request_count()

    second = ask(replicas.b, "sk-bob", CACHED)  # the other replica, the same scope: a hit, at no cost
    assert second.status == 200 and second.text == first.text
    assert second.trail is not None and second.trail["cache_hit"] is not None
    assert Decimal(second.trail["cost_usd"]) == 0
    assert Decimal(second.trail["cache_hit"]["saved_usd"]) == ANSWER_COST
    assert replicas.replay.request_count() == calls, "a hit calls no stage"

    for key, tenant, user in (("sk-cat", "acme", "cat"), ("sk-zed", "globex", "zed")):  # other scopes: no hit
        other = ask(replicas.b, key, CACHED)
        assert other.status == 200 and other.trail is not None and other.trail["cache_hit"] is None, key
        assert Decimal(other.trail["cost_usd"]) == ANSWER_COST
        assert spent(replicas.ledger, tenant, user) == ANSWER_COST
    assert replicas.replay.request_count() == calls + 2
    assert spent(replicas.ledger, "acme", "bob") == ANSWER_COST, "the hit charged bob nothing"
    assert [r.model for r in records_of(replicas.ledger, "acme", "bob") if r.cost_usd] == [SMALL]


def test_a_users_budget_holds_across_replicas_and_every_charge_lands_on_its_scope(replicas):
    def one(i: int) -> Answer:
        return ask(replicas.a if i % 2 else replicas.b, "sk-ann", BUDGET_QUERIES[i])

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(40)))
    for extra in range(40, len(BUDGET_QUERIES)):  # then one at a time, no hold left, until the budget refuses
        answers.append(one(extra))
        if answers[-1].status == 429:
            break

    assert {a.status for a in answers} == {200, 429}, [a.message for a in answers if a.status not in (200, 429)]
    answered = [a for a in answers if a.status == 200]
    assert all(a.trail is not None and a.trail["cache_hit"] is None for a in answered), "no two queries match"
    assert all(Decimal(a.trail["cost_usd"]) == ANSWER_COST for a in answered if a.trail is not None)
    refusal = next(a for a in reversed(answers) if a.status == 429)
    reservation = Decimal(re.search(r"needs up to \$([0-9.]+)", refusal.message).group(1))  # type: ignore[union-attr]
    assert "user 'ann' of tenant 'acme' daily limit $0.0004" in refusal.message

    total = spent(replicas.ledger, "acme", "ann")
    assert total == ANSWER_COST * len(answered), "the ledger holds exactly what the answers cost"
    assert total <= USER_LIMIT < total + reservation, "the budget held, and was used up"
    from shared_scorer.budget import Budget, Limit
    from shared_scorer.context import Scope

    (status,) = Budget(replicas.ledger, [Limit("user", USER_LIMIT)]).status(Scope("acme", "ann"))
    assert (status.spent_usd, status.held_usd) == (total, Decimal(0))
    assert {(r.tenant, r.user) for r in replicas.ledger.records()} <= {
        (s["tenant"], s["user"]) for s in KEYS.values()
    }, "no charge to a scope without a key"

    workers = {a.replica for i, a in enumerate(answers[:40]) if i % 2}
    assert len(workers) == 2 and "" not in workers, f"both workers of replica A answered: {workers}"
    assert not workers & {a.replica for i, a in enumerate(answers[:40]) if not i % 2}


def test_workers_over_a_memory_ledger_are_refused_before_any_starts(tmp_path, capsys):
    """Each worker would hold its own in-memory budget: the command says so and starts nothing."""
    require(importlib.util.find_spec("uvicorn") is not None, "uvicorn is not installed")
    from shared_scorer.cli import main

    (tmp_path / "keys.json").write_text(json.dumps(KEYS))
    argv = ["serve", "--strategy", str(tmp_path / "s.json"), "--keys", str(tmp_path / "keys.json"),
            "--stages-base-url", "http://127.0.0.1:9/v1", "--ledger", "memory:", "--workers", "2"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--workers 2 --ledger memory:: each worker would keep its own budget" in err
    assert "redis://HOST:PORT/DB" in err


def test_a_worker_that_cannot_start_fails_the_command_naming_why(tmp_path, monkeypatch, capsys):
    """uvicorn's supervisor stops when a worker cannot build its app, but exits 0: the command exits 2 with
    the worker's reason. Each worker gets the command's options as they were parsed."""
    for package in ("uvicorn", "starlette", "langchain_openai"):
        require(importlib.util.find_spec(package) is not None, f"{package} is not installed")
    import os

    import uvicorn

    from shared_scorer.budget import Limit
    from shared_scorer.cli import main
    from shared_scorer.cli import serve as serve_command
    from shared_scorer.errors import CheckpointError
    from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

    calls: list[tuple[Any, dict[str, Any]]] = []

    def run(app: Any, **options: Any) -> None:  # the supervisor: a worker builds its app from the options
        calls.append((app, options))
        handed = serve_command.decode_args(os.environ[serve_command.SERVE_ARGS_ENV])
        assert (handed.strategy, handed.limit, handed.workers) == (tmp_path / "s.json", [Limit("user", "5")], 3)
        with pytest.raises(CheckpointError):
            serve_command.app_from_env()  # the strategy's scorer folder is missing

    monkeypatch.setattr(uvicorn, "run", run)
    point = FrontierPoint((SMALL, BIG), (0.5,), accuracy=1.0, cost=0.0)
    table = {m: {"input_per_mtok": p[0], "output_per_mtok": p[1]} for m, p in PRICES.items()}
    Strategy.from_frontier(Frontier([point]), scorer="scorer", data_fingerprint="0" * 64, prices=table).save(
        tmp_path / "s.json"
    )
    (tmp_path / "keys.json").write_text(json.dumps(KEYS))
    argv = ["serve", "--strategy", str(tmp_path / "s.json"), "--keys", str(tmp_path / "keys.json"),
            "--stages-base-url", "http://127.0.0.1:9/v1", "--ledger", str(tmp_path / "ledger.db"),
            "--limit", "user=5/day", "--workers", "3", "--port", "8123"]  # fmt: skip
    assert main(argv) == 2
    assert calls == [
        ("shared_scorer.cli.serve:app_from_env", {"factory": True, "host": "127.0.0.1", "port": 8123, "workers": 3})
    ]
    err = capsys.readouterr().err
    assert "frugal serve --workers 3: a worker could not start: CheckpointError: " in err
    assert f"{tmp_path / 'scorer' / 'scorer.json'}: missing" in err
    assert serve_command.SERVE_ARGS_ENV not in os.environ and serve_command.SERVE_FAILURES_ENV not in os.environ


def test_an_exact_only_chroma_cache_is_refused_at_start():
    """Chroma stores vectors: exact-only, every store failed (logged, tolerated) and nothing was ever cached."""
    from shared_scorer.errors import ConfigurationError
    from shared_scorer.server.gateway import open_answer_cache

    with pytest.raises(ConfigurationError, match="cannot be exact-only"):
        open_answer_cache("http://127.0.0.1:9", semantic=False)


def test_frugal_serve_with_workers_that_cannot_start_exits_2_naming_why(tmp_path):
    """The real command: uvicorn would restart a worker whose app cannot be built forever; the worker
    stops the command instead, which exits 2 with the reason (here: the strategy's scorer is missing)."""
    for package in ("uvicorn", "starlette", "langchain_openai"):
        require(importlib.util.find_spec(package) is not None, f"{package} is not installed")
    import subprocess

    from shared_scorer.budget.redis_server import free_port
    from shared_scorer.server.replicas import frugal_command
    from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

    point = FrontierPoint((SMALL, BIG), (0.5,), accuracy=1.0, cost=0.0)
    table = {m: {"input_per_mtok": p[0], "output_per_mtok": p[1]} for m, p in PRICES.items()}
    Strategy.from_frontier(Frontier([point]), scorer="scorer", data_fingerprint="0" * 64, prices=table).save(
        tmp_path / "s.json"
    )
    (tmp_path / "keys.json").write_text(json.dumps(KEYS))
    argv = [*frugal_command(), "serve", "--strategy", str(tmp_path / "s.json"), "--keys", str(tmp_path / "keys.json"),
            "--stages-base-url", "http://127.0.0.1:9/v1", "--ledger", str(tmp_path / "ledger.db"),
            "--workers", "2", "--port", str(free_port())]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "frugal serve: error: frugal serve --workers 2: a worker could not start: CheckpointError: "
        f"{tmp_path / 'scorer' / 'scorer.json'}: missing (not a DistilBertScorer checkpoint folder)"
    )
