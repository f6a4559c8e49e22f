"""Two ``frugal serve`` replicas driven at once over one Redis ledger and one Chroma answer cache.

Starts its own ``redis-server``, ``chroma run`` and replay server on 127.0.0.1, saves a two-stage strategy
with a tiny random DistilBERT scorer (its first stage accepts every answer, so each answer's cost is
known), then runs replica A as ``frugal serve --workers 2`` and replica B as a second ``frugal serve``
process. ``requests`` requests (``concurrency`` at a time) come from four keys, two
tenants of two users: every other request of a key is a question of its own, the others one of five
questions the key asks again and again, each request of a key on the other replica than the last, so that
an answer one replica caches is asked of the other. Limits: ``user=0.0004/day`` for every user and
``tenant:globex=0.0005/day``; every user runs out.

    python benchmarks/replicas.py [--requests 200] [--concurrency 8] [--workers 2]

Prints JSON: ``requests_per_s``; per replica the requests, answers, refusals, cache hits and p50/p95
latency (ms), and how many worker processes answered; ``cross_replica_cache_hits`` (hits served by the
replica that did not answer the question first for that key), ``foreign_cache_hits`` (hits for a key
that never had the question answered: must be 0); per limited scope the limit, the ledger's spend, the
largest reservation and ``overshoot_usd`` (must be <= one reservation; the ledger makes it 0);
``wrong_scope_charges`` (ledger records whose scope's sum differs from what that key's answers cost, or
that no key owns: must be 0); and the machine facts. Money is printed as exact decimal strings.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import machine
from shared_scorer.budget import Budget, Limit
from shared_scorer.budget.redis_ledger import RedisLedger
from shared_scorer.budget.redis_server import redis_server
from shared_scorer.cache.chroma_server import chroma_server
from shared_scorer.context import Scope
from shared_scorer.server.replicas import serve_processes, tiny_strategy
from shared_scorer.server.testing import make_record, replay_server

SMALL, BIG = "bench-small", "bench-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
KEYS = {
    f"sk-{tenant}-{user}": {"tenant": tenant, "user": user} for tenant in ("acme", "globex") for user in ("ann", "bob")
}
USER_LIMIT, GLOBEX_LIMIT = Decimal("0.0004"), Decimal("0.0005")
POOL = [f"Shared question {j}: name the capital of country number {j}." for j in range(5)]


@dataclass
class Outcome:
    replica: str
    key: str
    query: str
    status: int
    latency_ms: float
    worker: str = ""
    cost: Decimal = Decimal(0)
    hit: bool = False
    message: str = ""
    done: float = field(default_factory=time.monotonic)


def workload(requests: int) -> list[tuple[str, str, str]]:
    """(replica, key, query) of each request: every other request of a key is a question of its own, the
    others one of :data:`POOL`; a key's requests alternate between the replicas."""
    keys = list(KEYS)
    out = []
    for i in range(requests):
        key, turn = keys[i % len(keys)], i // len(keys)
        own = f"Own question {i} of {key}: what is {i} plus {turn}?"
        out.append(("AB"[(i + turn + turn // 2) % 2], key, own if turn % 2 == 0 else POOL[turn // 2 % len(POOL)]))
    return out


def ask(base_url: str, replica: str, key: str, query: str) -> Outcome:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    start = time.perf_counter()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="frugal", messages=[{"role": "user", "content": query}]
        )
    except openai.APIStatusError as exc:
        elapsed = (time.perf_counter() - start) * 1000
        message = str(exc.body.get("message", "")) if isinstance(exc.body, dict) else str(exc)
        worker = exc.response.headers.get("x-frugal-replica", "")
        return Outcome(replica, key, query, exc.status_code, elapsed, worker, message=message)
    elapsed = (time.perf_counter() - start) * 1000
    trail = (raw.parse().model_extra or {})["frugal"]
    worker = raw.headers.get("x-frugal-replica", "")
    hit = trail["cache_hit"] is not None
    return Outcome(replica, key, query, 200, elapsed, worker, Decimal(trail["cost_usd"]), hit)


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of replica A (B has one)")
    args = parser.parse_args(argv)
    plan = workload(args.requests)
    queries = sorted({q for _, _, q in plan})
    records = [
        record
        for q in queries
        for record in (
            make_record(q, f"The answer to: {q}", model=SMALL, input_tokens=12, output_tokens=3),
            make_record(q, f"The long answer to: {q}", model=BIG, input_tokens=12, output_tokens=9, correct=0.0),
        )
    ]
    with tempfile.TemporaryDirectory(prefix="frugal-replicas-") as tmp:
        folder = Path(tmp)
        strategy = tiny_strategy(folder, records[:8], chain=[SMALL, BIG], thresholds=[0.0], prices=PRICES)
        (folder / "keys.json").write_text(json.dumps(KEYS))
        with redis_server() as ledger_url, chroma_server() as cache_url, replay_server(records) as replay:
            common = ["--strategy", str(strategy), "--keys", str(folder / "keys.json"), "--stages-base-url",
                      replay.base_url, "--ledger", ledger_url, "--answer-cache", cache_url, "--limit",
                      f"user={USER_LIMIT}/day", "--limit", f"tenant:globex={GLOBEX_LIMIT}/day", "--max-tokens", "50",
                      "--stage-retries", "0"]  # fmt: skip
            env = {"OPENAI_API_KEY": "unused", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
            arg_lists = [[*common, "--workers", str(args.workers)], common]
            with serve_processes(arg_lists, key=next(iter(KEYS)), env=env, cwd=folder) as (url_a, url_b):
                urls = {"A": url_a, "B": url_b}
                start = time.perf_counter()
                with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                    futures = [pool.submit(ask, urls[replica], replica, key, query) for replica, key, query in plan]
                    outcomes = [f.result() for f in futures]
                wall = time.perf_counter() - start
                ledger = RedisLedger(ledger_url)
                report = summarise(outcomes, ledger, wall, args)
    report["machine"] = machine()
    print(json.dumps(report, indent=2))
    return 0


def summarise(outcomes: list[Outcome], ledger: RedisLedger, wall: float, args: argparse.Namespace) -> dict[str, Any]:
    per_replica: dict[str, Any] = {}
    for name in ("A", "B"):
        mine = [o for o in outcomes if o.replica == name]
        answered = [o for o in mine if o.status == 200]
        per_replica[name] = {
            "workers": args.workers if name == "A" else 1,
            "requests": len(mine),
            "answered": len(answered),
            "refused_budget": sum(o.status == 429 for o in mine),
            "other_errors": sum(o.status not in (200, 429) for o in mine),
            "cache_hits": sum(o.hit for o in answered),
            "processes_that_answered": len({o.worker for o in mine}),
            "p50_ms": percentile([o.latency_ms for o in mine], 50),
            "p95_ms": percentile([o.latency_ms for o in mine], 95),
            "answered_p50_ms": percentile([o.latency_ms for o in answered], 50),
            "answered_p95_ms": percentile([o.latency_ms for o in answered], 95),
        }
    # who answered each (key, query) at a cost: a hit elsewhere was served across replicas
    paid_by: dict[tuple[str, str], set[str]] = defaultdict(set)
    for o in outcomes:
        if o.status == 200 and not o.hit:
            paid_by[(o.key, o.query)].add(o.replica)
    hits = [o for o in outcomes if o.status == 200 and o.hit]
    cross = sum(bool(paid_by[(o.key, o.query)]) and o.replica not in paid_by[(o.key, o.query)] for o in hits)
    foreign = sum(not paid_by[(o.key, o.query)] for o in hits)

    expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for o in outcomes:
        expected[(KEYS[o.key]["tenant"], KEYS[o.key]["user"])] += o.cost
    recorded: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    counts: Counter[tuple[str, str]] = Counter()
    for r in ledger.records():
        recorded[(r.tenant, r.user)] += r.cost_usd
        counts[(r.tenant, r.user)] += 1
    wrong = sum(counts[s] for s in recorded if s not in expected or recorded[s] != expected[s])

    reservations = [Decimal(m.group(1)) for o in outcomes if (m := re.search(r"needs up to \$([0-9.]+)", o.message))]
    largest = max(reservations, default=Decimal(0))
    budget = Budget(ledger, [Limit("user", USER_LIMIT), Limit("tenant", GLOBEX_LIMIT, tenant="globex")])
    limits = []
    seen: set[str] = set()
    for tenant, user in sorted({(v["tenant"], v["user"]) for v in KEYS.values()}):
        for status in budget.status(Scope(tenant, user)):
            if status.key in seen:
                continue
            seen.add(status.key)
            limits.append({
                "limit": status.limit, "limit_usd": str(status.usd), "spent_usd": str(status.spent_usd),
                "held_usd": str(status.held_usd), "overshoot_usd": str(max(Decimal(0), status.spent_usd - status.usd)),
            })  # fmt: skip
    overshoot = max(Decimal(limit["overshoot_usd"]) for limit in limits)
    total = len(outcomes)
    return {
        "requests": total,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 3),
        "requests_per_s": round(total / wall, 2),
        "replicas": per_replica,
        "cache_hits": len(hits),
        "cross_replica_cache_hits": cross,
        "foreign_cache_hits": foreign,
        "budget_overshoot_usd": str(overshoot),
        "max_reservation_usd": str(largest),
        "overshoot_within_one_reservation": overshoot <= largest,
        "limits": limits,
        "ledger_spent_usd": str(sum(recorded.values(), Decimal(0))),
        "answers_cost_usd": str(sum(expected.values(), Decimal(0))),
        "wrong_scope_charges": wrong,
    }


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
