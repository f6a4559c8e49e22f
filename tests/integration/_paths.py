"""Shared pieces of the call-path matrix (``test_call_paths.py``): data, billing, spies and the one check.

Every cell of the matrix is a function ``call(user) -> list[Reply]`` (tenant ``acme``) over a fresh
:class:`Rig`; :func:`check_cell` drives it as ann, as ann again (a cache hit) and as bob (a miss) and
collects every broken guarantee (scope, exact cost, child runs) before failing, so one failure report
names all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from shared_scorer import TokenPrice
from shared_scorer.budget import Budget, LedgerCostTracker, Limit, MemoryLedger
from shared_scorer.cache import AnswerCache, HashingEmbedder
from shared_scorer.context import Scope
from shared_scorer.server.testing import make_record

SMALL, BIG = "paths-small", "paths-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
MAX_TOKENS = 64
"""Every stage client's output cap: the budget's worst case is bounded by it."""

Q1, Q2 = "Who wrote Middlemarch?", "Who wrote Jane Eyre?"
A1, A2 = "George Eliot, the pen name of Mary Ann Evans", "Charlotte Bronte, in 1847, as Currer Bell"
TOOL_Q = "What is the weather in Paris?"
TOOL_TEXT = 'get_weather({"city": "Paris"})'
TOKENS = {  # (model, query) -> (input, output) tokens the replay server bills
    (SMALL, Q1): (12, 3),
    (BIG, Q1): (12, 11),
    (SMALL, Q2): (10, 3),
    (BIG, Q2): (10, 12),
    (SMALL, TOOL_Q): (40, 8),
    (BIG, TOOL_Q): (40, 10),
}
RECORDS = [
    make_record(Q1, "Charles Dickens", model=SMALL, input_tokens=12, output_tokens=3),
    make_record(Q1, A1, model=BIG, input_tokens=12, output_tokens=11),
    make_record(Q2, "Emily Bronte", model=SMALL, input_tokens=10, output_tokens=3),
    make_record(Q2, A2, model=BIG, input_tokens=10, output_tokens=12),
]
SCENARIOS = [  # stage 0 writes arguments that do not parse (invalid, escalates, still billed)
    {"model": SMALL, "match": TOOL_Q, "tool_calls": [{"name": "get_weather", "arguments": '{"city": '}],
     "usage": {"prompt_tokens": 40, "completion_tokens": 8}},
    {"model": BIG, "match": TOOL_Q, "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
     "usage": {"prompt_tokens": 40, "completion_tokens": 10}},
]  # fmt: skip
WEATHER_SCHEMA = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny in {city}"


def scorer(query: str, answer: str) -> float:
    """Stage 0's answers score low (rejected), stage 1's high."""
    return 0.1 if answer in ("Charles Dickens", "Emily Bronte") else 0.9


def price(model: str, tokens_in: int, tokens_out: int) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(tokens_in, tokens_out)


def billed(requests: list[Any]) -> Decimal:
    """What the replay server charged for ``requests`` (its request log) at ``PRICES``."""
    return sum((price(r.model, *TOKENS[(r.model, r.query)]) for r in requests), Decimal(0))


def tool_text(calls: list[tuple[str, Any]]) -> str:
    """Tool calls as one comparable string, e.g. ``get_weather({"city": "Paris"})``."""
    out = []
    for name, args in calls:
        args = json.loads(args) if isinstance(args, str) else dict(args)
        out.append(f"{name}({json.dumps(args, sort_keys=True)})")
    return "\n".join(out)


def usd(value: Any) -> Decimal:
    """A trail's money as Decimal, whether it is a Decimal or (JSON-safe) a string."""
    return Decimal(str(value))


class SpyCache(AnswerCache):
    """The real in-memory ``AnswerCache`` that also records the scope of every lookup and store."""

    def __init__(self) -> None:
        super().__init__(embedder=HashingEmbedder())
        self.lookups: list[Scope] = []
        self.stores: list[Scope] = []

    def lookup(self, query: str, context: Any) -> Any:
        self.lookups.append(context.scope)
        return super().lookup(query, context)

    def store(self, query: str, answer: str, context: Any, **kwargs: Any) -> None:
        self.stores.append(context.scope)
        super().store(query, answer, context, **kwargs)


@dataclass
class Rig:
    """Fresh per cell: the answer cache, the per-user budget and the ledger-backed cost tracker."""

    cache: SpyCache = field(default_factory=SpyCache)
    budget: Budget = field(default_factory=lambda: Budget(MemoryLedger(), [Limit("user", "1", period="day")]))
    tracker: LedgerCostTracker = field(default_factory=lambda: LedgerCostTracker(MemoryLedger()))

    def spent(self, tenant: str, user: str) -> Decimal:
        return sum((s.spent_usd for s in self.budget.status(Scope(tenant, user))), Decimal(0))


@dataclass
class Reply:
    """What one answer looked like to the caller: its text (or tool calls as text) and its trail."""

    text: str
    trail: dict[str, Any] | None
    trail_expected: bool = True
    """False where the entry point returns no response to carry one (``predict_and_call``)."""


class Runs(Protocol):
    """Observes the framework's runs: for each cascade run, the stage numbers of its child runs."""

    def reset(self) -> None: ...

    def children(self) -> list[list[int]]: ...


def check_cell(
    server: Any, rig: Rig, call: Callable[[str], list[Reply]], expected: list[str], runs: Runs | None = None
) -> None:
    """Ann twice (miss, then hit unless the answer is a tool call), then bob; every guarantee checked."""
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    cacheable = TOOL_TEXT not in expected
    spent_before = Decimal(0)
    records_before = 0
    for step, user in enumerate(("ann", "ann", "bob")):
        hit = cacheable and step == 1
        server.clear_requests()
        rig.cache.lookups.clear()
        rig.cache.stores.clear()
        if runs is not None:
            runs.reset()
        replies = call(user)
        requests = list(server.requests)
        cost = billed(requests)
        where = f"[{user} call {step + 1}{', cache hit' if hit else ''}]"
        expect([r.text for r in replies] == expected, f"{where} answers {[r.text for r in replies]!r} != {expected!r}")
        # 1. scope: cache, budget, ledger
        expect(
            len(requests) == (0 if hit else 2 * len(expected)), f"{where} {len(requests)} provider calls: {requests}"
        )
        expect(
            set(rig.cache.lookups) == {Scope("acme", user)},
            f"{where} cache looked up under {sorted(set(rig.cache.lookups))}, not acme/{user}",
        )
        expect(
            all(s == Scope("acme", user) for s in rig.cache.stores), f"{where} cache stored under {rig.cache.stores}"
        )
        if cacheable and step == 0:
            expect(len(rig.cache.stores) == len(expected), f"{where} {len(rig.cache.stores)} answers cached")
        spent = rig.spent("acme", user) - (spent_before if user == "ann" else 0)
        expect(spent == cost, f"{where} budget acme/{user} settled {spent}, replay server billed {cost}")
        for tenant, other in (("acme", "default"), ("default", "default")):
            expect(rig.spent(tenant, other) == 0, f"{where} budget {tenant}/{other} charged {rig.spent(tenant, other)}")
        records = rig.tracker.ledger.records()[records_before:]
        records_before += len(records)
        scopes = {(r.tenant, r.user) for r in records}
        expect(scopes == {("acme", user)}, f"{where} ledger records under {sorted(scopes)}, not acme/{user}")
        ledger_cost = sum((r.cost_usd for r in records), Decimal(0))
        expect(ledger_cost == cost, f"{where} ledger recorded {ledger_cost}, replay server billed {cost}")
        if user == "ann":
            spent_before = rig.spent("acme", "ann")
        # 2. cost on the trail, exact, per stage
        trails = [r.trail for r in replies if r.trail is not None]
        if not all(r.trail_expected for r in replies):
            pass
        elif len(trails) == len(replies):
            total = sum((usd(t["cost_usd"]) for t in trails), Decimal(0))
            for trail in trails:
                try:
                    json.dumps(trail)
                except TypeError as exc:
                    expect(False, f"{where} the trail is not JSON-safe: {exc}")
            expect(total == cost, f"{where} trail cost {total}, replay server billed {cost}")
            hits = [t.get("cache_hit") is not None for t in trails]
            expect(hits == [hit] * len(trails), f"{where} cache_hit on the trail {hits}, expected {hit}")
            for trail, query in zip(trails if not hit else [], _queries(expected), strict=False):
                for stage in trail.get("stages") or []:
                    tokens = TOKENS.get((stage["model"], query))
                    want = price(stage["model"], *tokens) if tokens else None
                    got = usd(stage["cost_usd"])
                    expect(got == want, f"{where} stage {stage['stage']} ({stage['model']}) cost {got}, billed {want}")
                    estimated = stage.get("usage_estimated")
                    expect(
                        not estimated, f"{where} stage {stage['stage']} usage estimated, though the provider reports it"
                    )
        else:
            expect(False, f"{where} {len(replies) - len(trails)} of {len(replies)} answers carry no frugal trail")
        # 3. child runs
        if runs is not None:
            children = runs.children()
            want_children = [[] for _ in expected] if hit else [[0, 1] for _ in expected]
            expect(
                children == want_children, f"{where} child runs per cascade run {children}, expected {want_children}"
            )
    assert not problems, "\n".join(problems)


def _queries(expected: list[str]) -> list[str]:
    by_answer = {A1: Q1, A2: Q2, TOOL_TEXT: TOOL_Q}
    return [by_answer[a] for a in expected]
