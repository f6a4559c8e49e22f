"""One budget on the Redis ledger under load: several processes, faults injected, a worker killed mid-call.

Starts its own ``redis-server`` and replay server on 127.0.0.1. A *victim* process reserves a stage whose
call hangs and is killed (SIGKILL) while the load runs; ``workers`` processes then send ``requests``
requests in all, each process all at once (asyncio), through a two-stage ``Cascade`` whose stage calls
go to the replay server with faults injected (HTTP 500 and 429, malformed and garbage bodies). Every
process shares one ``Budget`` (an overall limit and a daily limit per tenant) on the Redis ledger.

    python benchmarks/budget_load.py [--workers 4] [--requests 200] [--limit-usd 0.03]

Prints JSON: ``requests``, ``answered``, ``budget_stopped``, ``refused``, ``failed``, ``limit_usd``,
``settled_usd`` (the ledger's overall spend), ``trail_sum_usd`` (the sum of every trail's stage costs),
``records_sum_usd`` (the ledger's records), ``overspend_usd`` (the most any limit was crossed by),
``max_reservation_usd``, the killed worker's hold and when it was released, and the machine facts.
Money is printed as exact decimal strings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import multiprocessing
import os
import queue
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import machine
from shared_scorer.budget import Budget, LedgerCostTracker, Limit, from_nano
from shared_scorer.budget.redis_ledger import RedisLedger
from shared_scorer.budget.redis_server import redis_server
from shared_scorer.hooks import Scope

SMALL, BIG, HANG = "load-small", "load-big", "load-hang"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15"), HANG: ("5", "15")}
MAX_TOKENS = 64
TENANTS = ("acme", "globex", "initech")
QUERIES = 60
FAULTS = [(SMALL, "500", 12), (SMALL, "malformed", 6), (BIG, "429", 6), (BIG, "garbage", 4)]
_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("scope", default=None)


def query_text(i: int) -> str:
    return f"Load question number {i}: what is {i} times {i + 3}?"


def records() -> list[Any]:
    from shared_scorer.replay.testing import make_record

    out = []
    for i in range(QUERIES):
        q = query_text(i)
        small_answer = f"{i * (i + 3)} ok" if i % 2 == 0 else f"maybe {i}"
        out.append(make_record(q, small_answer, model=SMALL, input_tokens=20 + i % 7, output_tokens=3 + i % 5))
        out.append(make_record(q, f"{i * (i + 3)} ok", model=BIG, input_tokens=20 + i % 7, output_tokens=5 + i % 9))
        out.append(make_record(q, "never answered", model=HANG, input_tokens=20, output_tokens=5))
    return out


def limits(limit_usd: str) -> list[Limit]:
    per_tenant = Decimal(limit_usd) / 2  # three tenants, each allowed half the overall limit
    return [Limit("overall", limit_usd, period=None), Limit("tenant", per_tenant, period="day")]


def _stage(client: Any, model: str, query: str) -> Any:
    from shared_scorer.outcome import StageOutput

    async def call() -> StageOutput:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": query}], max_tokens=MAX_TOKENS
        )
        usage = reply.usage
        return StageOutput(reply.choices[0].message.content or "", usage.prompt_tokens, usage.completion_tokens)

    return call


def _cascade(models: list[str], redis_url: str, prefix: str, limit_usd: str, ttl_s: float) -> Any:
    from shared_scorer.cascade import Cascade

    ledger = RedisLedger(redis_url, prefix=prefix)
    budget = Budget(ledger, limits(limit_usd), reservation_ttl_s=ttl_s)
    tracker = LedgerCostTracker(ledger, scope_of=lambda result: _scope.get())
    scorer = lambda query, answer: 0.9 if answer.endswith(" ok") else 0.2  # noqa: E731
    thresholds = [0.5] * (len(models) - 1)
    return Cascade(models, thresholds, scorer, prices=PRICES, budget=budget, tracker=tracker, on_budget="stop")


async def _one(cascade: Any, client: Any, n: int, scope: Scope | None = None) -> dict[str, Any]:
    from shared_scorer.errors import FrugalError
    from shared_scorer.hooks import BudgetExceeded, build_context

    query = query_text(n % QUERIES)
    scope = scope or Scope(TENANTS[n % len(TENANTS)], f"user{n % 5}")
    _scope.set(scope)
    context = build_context([("user", query)], scope=scope, max_output_tokens=MAX_TOKENS)
    worst = max(price.cost(context.input_tokens_bound, MAX_TOKENS) for price in cascade.prices)
    calls = [_stage(client, model, query) for model in cascade.models]
    try:
        result = await cascade.arun(query, calls, context=context)
        outcome = "budget_stopped" if result.budget_stopped else "answered"
    except BudgetExceeded as exc:
        result, outcome = exc.result, "refused"  # type: ignore[attr-defined]
    except FrugalError as exc:
        result, outcome = exc.result, "failed"  # type: ignore[attr-defined]
    trail = result.trail()
    stage_sum = sum((Decimal(s["cost_usd"]) for s in trail["stages"]), Decimal(0))
    return {"outcome": outcome, "trail_usd": str(stage_sum), "worst_usd": str(worst), "tenant": scope.tenant}


def worker(redis_url: str, replay_url: str, prefix: str, limit_usd: str, ttl_s: float, n0: int, count: int,
           results: Any) -> None:  # fmt: skip
    """One replica: ``count`` concurrent requests; puts the list of per-request figures on ``results``."""
    import openai

    async def main() -> list[dict[str, Any]]:
        client = openai.AsyncOpenAI(base_url=replay_url, api_key="load", max_retries=0, timeout=10)
        cascade = _cascade([SMALL, BIG], redis_url, prefix, limit_usd, ttl_s)
        return await asyncio.gather(*(_one(cascade, client, n) for n in range(n0, n0 + count)))

    results.put(asyncio.run(main()))


def victim(redis_url: str, replay_url: str, prefix: str, limit_usd: str, ttl_s: float) -> None:
    """A replica whose only call hangs: it is killed while its reservation is held."""
    import openai

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=replay_url, api_key="load", max_retries=0, timeout=120)
        cascade = _cascade([HANG], redis_url, prefix, limit_usd, ttl_s)
        await _one(cascade, client, 0, Scope("victim"))

    asyncio.run(main())


def _wait(condition: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def run_load(*, workers: int = 4, requests: int = 200, limit_usd: str = "0.03", ttl_s: float = 3.0) -> dict[str, Any]:
    """Run the load and return the figures (money as exact decimal strings)."""
    from shared_scorer.replay.testing import replay_server

    started = time.perf_counter()
    # A fork server imports the heavy modules once; each replica is then a cheap fork of a thread-free process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["openai", "shared_scorer.cascade", "benchmarks.budget_load"])
    prefix = f"load{os.getpid()}"
    with redis_server() as redis_url, replay_server(records(), hang_seconds=60) as server:
        ledger = RedisLedger(redis_url, prefix=prefix)
        budget = Budget(ledger, limits(limit_usd))
        victim_bucket = budget.applicable(Scope("victim"))[1].bucket(Scope("victim"), time.time())
        args = (redis_url, server.base_url, prefix, limit_usd, ttl_s)
        server.set_fault(HANG, "hang")  # the victim's call never returns: it is killed mid-call
        doomed = context.Process(target=victim, args=args, daemon=True)
        doomed.start()
        _wait(lambda: ledger.figures(victim_bucket)[1] > 0 or not doomed.is_alive(), 60, "the victim's reservation")
        if not doomed.is_alive():
            raise RuntimeError(f"the victim process ended before it was killed (exit code {doomed.exitcode})")
        victim_held = from_nano(ledger.figures(victim_bucket)[1])
        for model, kind, count in FAULTS:
            server.set_fault(model, kind, count)
        results = context.Queue()
        per = [requests // workers + (i < requests % workers) for i in range(workers)]
        processes = [
            context.Process(target=worker, args=(*args, sum(per[:i]), per[i], results), daemon=True)
            for i in range(workers)
        ]
        for process in processes:
            process.start()
        os.kill(doomed.pid, signal.SIGKILL)  # mid-call: its stage hangs on the replay server
        doomed.join()
        killed_at = time.monotonic()
        rows: list[dict[str, Any]] = []
        released_after: float | None = None
        for _ in processes:
            while True:  # while the load runs, watch for the killed worker's hold to be released
                if released_after is None and ledger.figures(victim_bucket)[1] == 0:
                    released_after = time.monotonic() - killed_at
                try:
                    rows += results.get(timeout=0.1)
                    break
                except queue.Empty:
                    if time.monotonic() - killed_at > 120:
                        raise TimeoutError("the load workers did not finish in 120 s") from None
        for process in processes:
            process.join(timeout=30)
        _wait(lambda: ledger.figures(victim_bucket)[1] == 0, ttl_s + 10, "the killed worker's hold to expire")
        if released_after is None:
            released_after = time.monotonic() - killed_at
        spent = {key: from_nano(ledger.figures(key)[0]) for key in _buckets(budget)}
        held_after = sum(from_nano(ledger.figures(key)[1]) for key in _buckets(budget))
        records_sum = sum((r.cost_usd for r in ledger.records()), Decimal(0))
    overspend = max(max(Decimal(0), spent[key] - cap) for key, cap in _buckets(budget).items())
    outcomes = [row["outcome"] for row in rows]
    return {
        "requests": len(rows),
        "workers": workers,
        "answered": outcomes.count("answered"),
        "budget_stopped": outcomes.count("budget_stopped"),
        "refused": outcomes.count("refused"),
        "failed": outcomes.count("failed"),
        "faults_injected": [f"{model}:{kind}x{count}" for model, kind, count in FAULTS],
        "limit_usd": limit_usd,
        "tenant_limit_usd": str(Decimal(limit_usd) / 2),
        "settled_usd": str(spent["overall:all"]),
        "settled_by_tenant_usd": {key: str(value) for key, value in spent.items() if key != "overall:all"},
        "trail_sum_usd": str(sum((Decimal(row["trail_usd"]) for row in rows), Decimal(0))),
        "records_sum_usd": str(records_sum),
        "overspend_usd": str(overspend),
        "max_reservation_usd": str(max(Decimal(row["worst_usd"]) for row in rows)),
        "held_after_usd": str(held_after),
        "killed_worker_held_usd": str(victim_held),
        "killed_worker_released_after_s": round(released_after, 2),
        "reservation_ttl_s": ttl_s,
        "wall_s": round(time.perf_counter() - started, 2),
        "machine": machine(),
    }


def _buckets(budget: Budget) -> dict[str, Decimal]:
    """Every limit bucket the load touched, with its limit in USD."""
    now = time.time()
    out = {}
    for tenant in (*TENANTS, "victim"):
        for limit in budget.applicable(Scope(tenant)):
            out[limit.bucket(Scope(tenant), now)] = limit.usd
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--limit-usd", default="0.03", help="the overall limit; each tenant may spend half of it")
    parser.add_argument("--ttl", type=float, default=3.0, help="reservation time to live, seconds")
    args = parser.parse_args(argv)
    figures = run_load(workers=args.workers, requests=args.requests, limit_usd=args.limit_usd, ttl_s=args.ttl)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    from benchmarks import budget_load  # so that the replicas unpickle functions of the module, not of __main__

    sys.exit(budget_load.main())
