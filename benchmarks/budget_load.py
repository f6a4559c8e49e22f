"""One budget on the Redis ledger under load, through ``frugal serve`` replicas, with the client misbehaving.

Starts its own ``redis-server`` and replay server on 127.0.0.1. A *victim* process reserves a stage whose
call hangs and is killed (SIGKILL) while the load runs. ``workers`` processes are then each one
``frugal serve`` replica (the real app under uvicorn, a two-stage ``FrugalChatModel`` whose stages call
the replay server) and the OpenAI clients that load it, ``requests`` requests in all, each process all at
once. Every replica shares one ``Budget`` (an overall limit and a daily limit per tenant) on the Redis
ledger. The requests mix plain and streamed answers, clients that hang up mid-stream, replies longer
than 4,096 output tokens, and hostile ``max_tokens`` (-5, "abc", -1e9, true); faults are injected on the
stages (HTTP 500 and 429, malformed and garbage bodies).

    python benchmarks/budget_load.py [--workers 4] [--requests 200] [--limit-usd 3]

Each request's prompt is unique (its input tokens identify it) and names the key's tenant and user, so
every bill of the replay server is matched to the request that caused it and to the ledger's records.
Prints JSON: outcomes (``answered``, ``budget_stopped``, ``refused``, ``failed``, ``bad_request``,
``disconnected``), ``billed_usd`` (what the replay server billed), ``settled_usd`` (the ledger's overall
spend), ``records_sum_usd`` (the ledger's records), ``overspend_usd`` (the most any limit was crossed
by), ``max_reservation_usd``, ``misattributed_requests`` (requests charged to a scope that did not make
them), ``unrecorded_bills``, ``estimated_usd`` (settled from counted tokens where a streamed reply
carried no usage, so the replay server billed nothing: the injected garbage bodies), per tenant the same
figures, the killed worker's hold and when it was released, and the machine facts. Money is printed as
exact decimal strings. Target: settled = billed (+ estimated), overspend <= one reservation, 0 misattributed.
"""

from __future__ import annotations

import argparse
import asyncio
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
from shared_scorer.context import Scope

SMALL, BIG, HANG = "load-small", "load-big", "load-hang"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15"), HANG: ("5", "15")}
CAPS = {SMALL: 64, BIG: 8192, HANG: 64}
"""Each stage's output cap (its client's ``max_tokens``): a reservation assumes that many output tokens."""
TENANTS = ("acme", "globex", "initech")
USERS = 5
VICTIM = Scope("victim")
VICTIM_QUERY = "The victim's question, whose call hangs."
KINDS = (
    "long-stream-hangup",
    "long",
    "stream",
    "stream",
    "hostile",
    "stream-hangup",
    "plain",
    "plain",
    "plain",
    "plain",
)
"""What request ``n`` does: ``KINDS[n % 10]`` (long: a reply of 4,500 to 5,943 output tokens)."""
HOSTILE = (-5, "abc", -1_000_000_000, True)
SHORT_MAX_TOKENS = 64
FAULTS = [(SMALL, "500", 12), (SMALL, "malformed", 6), (BIG, "429", 6), (BIG, "garbage", 4)]
REPLICA_TTL_S = 120.0
"""The replicas' reservation time to live: longer than any call, so only the killed victim's hold expires."""


def scope_of(n: int) -> Scope:
    return Scope(TENANTS[n % len(TENANTS)], f"user{n % USERS}")


def kind_of(n: int) -> str:
    return KINDS[n % len(KINDS)]


def input_tokens_of(n: int) -> int:
    """Request ``n``'s prompt tokens, unique per request: a bill's input tokens name its request."""
    return 1000 + n


def key_of(scope: Scope) -> str:
    return f"sk-{scope.tenant}-{scope.user}"


def query_text(n: int) -> str:
    scope = scope_of(n)
    return f"[{scope.tenant}/{scope.user}] Load question number {n}: what is {n} times {n + 3}?"


def records(requests: int) -> list[Any]:
    """Two recorded answers per request (small, big) and the victim's."""
    from shared_scorer.server.testing import make_record

    out = []
    for n in range(requests):
        q, tokens, long = query_text(n), input_tokens_of(n), kind_of(n).startswith("long")
        small = f"{n * (n + 3)} ok" if n % 2 == 0 and not long else f"maybe {n}"
        out.append(make_record(q, small, model=SMALL, input_tokens=tokens, output_tokens=3 + n % 5))
        big, big_tokens = f"{n * (n + 3)} ok", 5 + n % 9
        if long:
            big_tokens = 4500 + 37 * (n % 40)  # past the 4,096 tokens a guessed reservation would assume
            big = f"A long answer to question {n}. " * 120 + f"So: {n * (n + 3)} ok"
        out.append(make_record(q, big, model=BIG, input_tokens=tokens, output_tokens=big_tokens))
    out.append(make_record(VICTIM_QUERY, "never answered", model=HANG, input_tokens=20, output_tokens=5))
    return out


def limits(limit_usd: str) -> list[Limit]:
    per_tenant = Decimal(limit_usd) / 2  # three tenants, each allowed half the overall limit
    return [Limit("overall", limit_usd, period=None), Limit("tenant", per_tenant, period="day")]


def _score(query: str, answer: str) -> float:
    return 0.9 if answer.endswith(" ok") else 0.2


def _outcome(trail: Any) -> dict[str, Any]:
    if not isinstance(trail, dict):
        return {"outcome": "failed", "error": "no trail in the reply"}
    return {"outcome": "budget_stopped" if trail.get("budget_stopped") else "answered", "trail_usd": trail["cost_usd"]}


async def _request(http: Any, n: int) -> dict[str, Any]:
    """Request ``n`` through a replica, as its kind says; returns what the client saw."""
    import openai

    scope, kind = scope_of(n), kind_of(n)
    client = http.with_options(api_key=key_of(scope))
    messages = [{"role": "user", "content": query_text(n)}]
    # a short question asks for at most SHORT_MAX_TOKENS (it lowers the stages' caps, and so the reservations)
    cap: dict[str, Any] = {} if kind.startswith("long") else {"max_tokens": SHORT_MAX_TOKENS}
    row: dict[str, Any] = {"n": n, "tenant": scope.tenant, "user": scope.user, "kind": kind}
    try:
        if kind == "hostile":
            bad = {"max_tokens": HOSTILE[(n // len(KINDS)) % len(HOSTILE)]}
            await client.chat.completions.create(model="frugal", messages=messages, extra_body=bad)
            row["outcome"] = "hostile_accepted"  # must never happen
        elif "stream" in kind:
            stream = await client.chat.completions.create(model="frugal", messages=messages, stream=True, **cap)
            received, last = 0, None
            async for chunk in stream:
                received, last = received + 1, chunk
                if kind.endswith("hangup") and received >= 3:
                    await stream.close()  # hang up mid-stream
                    row["outcome"] = "disconnected"
                    return row
            row.update(_outcome((last.model_extra or {}).get("frugal") if last is not None else None))
        else:
            reply = await client.chat.completions.create(model="frugal", messages=messages, **cap)
            row.update(_outcome((reply.model_extra or {}).get("frugal")))
    except openai.BadRequestError:
        row["outcome"] = "bad_request"
    except openai.RateLimitError:
        row["outcome"] = "refused"
    except openai.APIError as exc:  # 422 all stages failed, or an error reported mid-stream
        row["outcome"], row["error"] = "failed", str(exc)[:200]
    return row


def _replica(redis_url: str, replay_url: str, prefix: str, limit_usd: str) -> tuple[Any, Any, str]:
    """One ``frugal serve`` replica under uvicorn in a thread; returns (server, thread, its /v1 URL)."""
    import threading

    import uvicorn
    from langchain_openai import ChatOpenAI

    from frugal_langchain import FrugalChatModel
    from frugal_langchain.serve import LangChainBackend
    from shared_scorer.budget.redis_server import free_port
    from shared_scorer.server.gateway import make_app

    ledger = RedisLedger(redis_url, prefix=prefix)
    budget = Budget(ledger, limits(limit_usd), reservation_ttl_s=REPLICA_TTL_S)
    stages = [
        ChatOpenAI(model=m, base_url=replay_url, api_key="load", max_retries=0, timeout=30,  # type: ignore[arg-type]
                   max_tokens=CAPS[m], stream_usage=True)  # type: ignore[call-arg]
        for m in (SMALL, BIG)
    ]  # fmt: skip
    model = FrugalChatModel(
        stages=stages, scorer=_score, thresholds=[0.5], prices={m: PRICES[m] for m in (SMALL, BIG)},
        budget=budget, cost_tracker=LedgerCostTracker(ledger), on_budget="stop",
    )  # fmt: skip
    keys = {key_of(scope_of(n)): scope_of(n) for n in range(len(TENANTS) * USERS)}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(LangChainBackend(model), keys, budget), host="127.0.0.1", port=port,
                                           log_level="error"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(lambda: server.started, 30, "the replica to start")
    return server, thread, f"http://127.0.0.1:{port}/v1"


def worker(redis_url: str, replay_url: str, prefix: str, limit_usd: str, n0: int, count: int, results: Any) -> None:
    """One replica and its clients: ``count`` concurrent requests; puts the list of per-request rows on ``results``."""
    import openai

    from shared_scorer.server import gateway

    server, thread, base_url = _replica(redis_url, replay_url, prefix, limit_usd)

    async def main() -> list[dict[str, Any]]:
        http = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        return await asyncio.gather(*(_request(http, n) for n in range(n0, n0 + count)))

    rows = asyncio.run(main())
    _wait(lambda: not gateway.background, 60, "the streams of clients that hung up to be read to the end")
    server.should_exit = True
    thread.join(timeout=10)
    results.put(rows)


def victim(redis_url: str, replay_url: str, prefix: str, ttl_s: float, limit_usd: str) -> None:
    """A replica whose only call hangs: it is killed while its reservation is held."""
    import openai

    from shared_scorer.cascade import Cascade
    from shared_scorer.context import build_context
    from shared_scorer.outcome import StageOutput

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=replay_url, api_key="load", max_retries=0, timeout=120)
        ledger = RedisLedger(redis_url, prefix=prefix)
        budget = Budget(ledger, limits(limit_usd), reservation_ttl_s=ttl_s)
        tracker = LedgerCostTracker(ledger, scope_of=lambda result: VICTIM)
        cascade = Cascade([HANG], [], _score, prices=PRICES, budget=budget, tracker=tracker)

        async def call() -> StageOutput:
            messages: Any = [{"role": "user", "content": VICTIM_QUERY}]
            reply = await client.chat.completions.create(model=HANG, messages=messages, max_tokens=CAPS[HANG])
            return StageOutput(reply.choices[0].message.content or "", 0, 0)

        context = build_context([("user", VICTIM_QUERY)], scope=VICTIM, max_output_tokens=CAPS[HANG])
        await cascade.arun(VICTIM_QUERY, [call], context=context)

    asyncio.run(main())


def _wait(condition: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def run_load(*, workers: int = 4, requests: int = 200, limit_usd: str = "3", ttl_s: float = 3.0) -> dict[str, Any]:
    """Run the load and return the figures (money as exact decimal strings)."""
    from shared_scorer.server.testing import replay_server

    started = time.perf_counter()
    # A fork server imports the heavy modules once; each replica is then a cheap fork of a thread-free process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["openai", "langchain_openai", "frugal_langchain.serve", "benchmarks.budget_load"])
    prefix = f"load{os.getpid()}"
    with redis_server() as redis_url, replay_server(records(requests), hang_seconds=60) as server:
        ledger = RedisLedger(redis_url, prefix=prefix)
        budget = Budget(ledger, limits(limit_usd))
        victim_bucket = budget.applicable(VICTIM)[1].bucket(VICTIM, time.time())
        server.set_fault(HANG, "hang")  # the victim's call never returns: it is killed mid-call
        doomed = context.Process(
            target=victim, args=(redis_url, server.base_url, prefix, ttl_s, limit_usd), daemon=True
        )
        doomed.start()
        _wait(lambda: ledger.figures(victim_bucket)[1] > 0 or not doomed.is_alive(), 60, "the victim's reservation")
        if not doomed.is_alive():
            raise RuntimeError(f"the victim process ended before it was killed (exit code {doomed.exitcode})")
        victim_held = from_nano(ledger.figures(victim_bucket)[1])
        for model, kind, count in FAULTS:
            server.set_fault(model, kind, count)
        results = context.Queue()
        per = [requests // workers + (i < requests % workers) for i in range(workers)]
        args = (redis_url, server.base_url, prefix, limit_usd)
        processes = [
            context.Process(target=worker, args=(*args, sum(per[:i]), per[i], results), daemon=True)
            for i in range(workers)
        ]
        for process in processes:
            process.start()
        assert doomed.pid is not None
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
                    if time.monotonic() - killed_at > 300:
                        raise TimeoutError("the load workers did not finish in 300 s") from None
        for process in processes:
            process.join(timeout=30)
        _wait(lambda: ledger.figures(victim_bucket)[1] == 0, ttl_s + 10, "the killed worker's hold to expire")
        if released_after is None:
            released_after = time.monotonic() - killed_at
        spent = {key: from_nano(ledger.figures(key)[0]) for key in _buckets(budget)}
        held_after = sum(from_nano(ledger.figures(key)[1]) for key in _buckets(budget))
        accounts = _accounts(server.bills, ledger.records(), requests)
        garbage = sum(1 for entry in server.requests if entry.fault in ("garbage", "malformed"))
    outcomes = [row["outcome"] for row in rows]
    tenants = {}
    for tenant in (*TENANTS, VICTIM.tenant):
        scope = Scope(tenant)
        bucket, cap = budget.applicable(scope)[1].bucket(scope, time.time()), budget.applicable(scope)[1].usd
        tenants[tenant] = {
            "requests": sum(1 for row in rows if row["tenant"] == tenant),
            "billed_usd": str(accounts["billed"].get(tenant, Decimal(0))),
            "settled_usd": str(spent[bucket]),
            "records_usd": str(accounts["recorded"].get(tenant, Decimal(0))),
            "estimated_usd": str(sum((a for _, _, a, t in accounts["unbilled"] if t == tenant), Decimal(0))),
            "limit_usd": str(cap),
            "overspend_usd": str(max(Decimal(0), spent[bucket] - cap)),
            "misattributed_requests": len([n for n in accounts["misattributed"] if scope_of(n).tenant == tenant]),
        }
    overspend = max(max(Decimal(0), spent[key] - cap) for key, cap in _buckets(budget).items())
    return {
        "requests": len(rows),
        "workers": workers,
        "kinds": {kind: sum(1 for row in rows if row["kind"] == kind) for kind in dict.fromkeys(KINDS)},
        **{name: outcomes.count(name) for name in OUTCOMES},
        "faults_injected": [f"{model}:{kind}x{count}" for model, kind, count in FAULTS],
        "limit_usd": limit_usd,
        "tenant_limit_usd": str(Decimal(limit_usd) / 2),
        "billed_usd": str(sum(accounts["billed"].values(), Decimal(0))),
        "settled_usd": str(spent["overall:all"]),
        "records_sum_usd": str(sum(accounts["recorded"].values(), Decimal(0))),
        "trail_sum_usd": str(sum((Decimal(row["trail_usd"]) for row in rows if row.get("trail_usd")), Decimal(0))),
        "overspend_usd": str(overspend),
        "max_reservation_usd": str(max_reservation(requests)),
        "misattributed_requests": len(accounts["misattributed"]),
        "unrecorded_bills": accounts["unrecorded"],
        "estimated_usd": str(sum((amount for _, _, amount, _ in accounts["unbilled"]), Decimal(0))),
        "estimated_records": [
            f"{tenant} {model}: {tokens} input tokens counted, ${amount}"
            for model, tokens, amount, tenant in accounts["unbilled"]
        ],
        "replies_without_usage": garbage,
        "long_replies_billed": accounts["long_billed"],
        "tenants": tenants,
        "held_after_usd": str(held_after),
        "killed_worker_held_usd": str(victim_held),
        "killed_worker_released_after_s": round(released_after, 2),
        "reservation_ttl_s": ttl_s,
        "errors": sorted({row["error"] for row in rows if row.get("error")})[:5],
        "wall_s": round(time.perf_counter() - started, 2),
        "machine": machine(),
    }


OUTCOMES = ("answered", "budget_stopped", "refused", "failed", "bad_request", "disconnected", "hostile_accepted")


def _accounts(bills: list[Any], rows: list[Any], requests: int) -> dict[str, Any]:
    """Match the replay server's bills to the ledger's records through each request's unique input tokens.

    ``billed``: USD billed per tenant that made the request; ``recorded``: USD of the ledger's records per
    tenant charged; ``misattributed``: requests with a record charged to another scope than theirs;
    ``unrecorded``: bills with no record of the same stage and cost; ``unbilled``: records with no such bill
    (a streamed reply that carried no usage, e.g. a garbage body: the cascade settles the tokens it counted).
    """
    from shared_scorer import TokenPrice

    request_of = {input_tokens_of(n): n for n in range(requests)}
    billed: dict[str, Decimal] = {}
    bill_keys = []
    long_billed = 0
    for bill in bills:
        n = request_of.get(bill.input_tokens)
        if n is None:
            continue
        amount = TokenPrice(*PRICES[bill.model]).cost(bill.input_tokens, bill.output_tokens)
        billed[scope_of(n).tenant] = billed.get(scope_of(n).tenant, Decimal(0)) + amount
        bill_keys.append((bill.model, bill.input_tokens, amount))
        long_billed += bill.output_tokens > 4096
    recorded: dict[str, Decimal] = {}
    misattributed: set[int] = set()
    unmatched: dict[tuple[str, int, Decimal], list[str]] = {}  # records not yet matched to a bill -> tenants
    for row in rows:
        if row.cost_usd == 0:
            continue
        recorded[row.tenant] = recorded.get(row.tenant, Decimal(0)) + row.cost_usd
        unmatched.setdefault((row.model, row.input_tokens, row.cost_usd), []).append(row.tenant)
        n = request_of.get(row.input_tokens)  # None: tokens counted by the cascade, not billed (see unbilled)
        if n is not None and (row.tenant, row.user) != (scope_of(n).tenant, scope_of(n).user):
            misattributed.add(n)
    unrecorded = 0
    for key in bill_keys:
        if unmatched.get(key):
            unmatched[key].pop()
        else:
            unrecorded += 1
    unbilled = [(model, tokens, amount, tenant) for (model, tokens, amount), ts in unmatched.items() for tenant in ts]
    return {"billed": billed, "recorded": recorded, "misattributed": misattributed, "unrecorded": unrecorded,
            "unbilled": unbilled, "long_billed": long_billed}  # fmt: skip


def max_reservation(requests: int) -> Decimal:
    """The largest single reservation of the load: a stage's price at its cap and the longest prompt's bound."""
    from shared_scorer import TokenPrice
    from shared_scorer.context import build_context

    longest = max((query_text(n) for n in range(requests)), key=lambda q: len(q.encode()))
    bound = build_context([("user", longest)], scope=Scope("any")).input_tokens_bound
    return max(TokenPrice(*PRICES[m]).cost(bound, CAPS[m]) for m in (SMALL, BIG))


def _buckets(budget: Budget) -> dict[str, Decimal]:
    """Every limit bucket the load touched, with its limit in USD."""
    now = time.time()
    out = {}
    for tenant in (*TENANTS, VICTIM.tenant):
        for limit in budget.applicable(Scope(tenant)):
            out[limit.bucket(Scope(tenant), now)] = limit.usd
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--limit-usd", default="3", help="the overall limit; each tenant may spend half of it")
    parser.add_argument("--ttl", type=float, default=3.0, help="the killed victim's reservation time to live, seconds")
    args = parser.parse_args(argv)
    figures = run_load(workers=args.workers, requests=args.requests, limit_usd=args.limit_usd, ttl_s=args.ttl)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    from benchmarks import budget_load  # so that the replicas unpickle functions of the module, not of __main__

    sys.exit(budget_load.main())
