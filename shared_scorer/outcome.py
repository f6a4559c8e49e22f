"""What one cascade call produced: each stage's output and trail entry, and the whole result."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from shared_scorer.context import CallContext
from shared_scorer.errors import StageFailure
from shared_scorer.protocols import CacheHit

Status = Literal["accepted", "rejected", "error", "invalid", "over_budget", "not_called", "routed_past"]
"""``routed_past``: the router predicted this stage would fail on this query; it was not called."""


def usd(amount: Decimal) -> str:
    """An exact amount of money as JSON-safe text, in fixed point: ``usd(Decimal("1E-8")) == "0.00000001"``."""
    return format(amount.normalize(), "f")


@dataclass(frozen=True)
class ToolCall:
    """A tool call an answer asks for; ``arguments`` is the parsed JSON object."""

    name: str
    arguments: Mapping[str, Any]
    id: str | None = None


@dataclass
class StageOutput:
    """What one provider call returned, in the core's terms.

    ``payload`` is the adapter's own object (a LangChain ``AIMessage``, a LlamaIndex ``ChatResponse``),
    handed back untouched when this answer is accepted. Token counts are ``None`` when the provider did
    not report them.
    """

    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    payload: Any = None
    problems: tuple[str, ...] = ()
    """Why the adapter found the reply malformed (e.g. tool-call arguments that do not parse)."""
    truncated: bool = False
    """The provider cut the reply at its output-token limit (``finish_reason: "length"``): not an answer."""
    usage_estimated: bool = False
    """The token counts are the adapter's estimate (see :mod:`shared_scorer.tokens`), not the provider's
    report; the stage is still billed on them."""
    logprob: float | None = None
    """The sum of the answer's token log-probabilities (see :func:`sum_logprobs`), or None when the
    provider gave none (not asked, or it does not support them)."""


_NO_LOGPROBS = re.compile(r"^(o\d|gpt-5(?!-chat))")
"""OpenAI reasoning models (o1, o3, o4-mini, gpt-5 but not gpt-5-chat): their API rejects ``logprobs``."""


def asks_logprobs(model: str) -> bool:
    """Whether a stage serving ``model`` is asked for token log-probabilities: every model but the OpenAI
    reasoning models, whose API answers ``logprobs`` with an error (a ``provider/`` prefix is ignored).

    >>> asks_logprobs("gpt-4o-mini"), asks_logprobs("o3-mini"), asks_logprobs("gpt-5-mini")
    (True, False, False)
    """
    return _NO_LOGPROBS.match(model.rsplit("/", 1)[-1].lower()) is None


def sum_logprobs(tokens: object) -> float | None:
    """The sum of the ``logprob`` of OpenAI token entries (dicts or objects, as
    ``choices[0].logprobs.content`` holds them; a ``{"content": [...]}`` mapping is read too), or None
    when there are none or one's ``logprob`` is not a finite number <= 0.

    >>> sum_logprobs([{"token": "A", "logprob": -0.25}, {"token": ".", "logprob": -0.5}])
    -0.75
    """
    if isinstance(tokens, Mapping):
        tokens = tokens.get("content")
    if not isinstance(tokens, list | tuple) or not tokens:
        return None
    total = []
    for token in tokens:
        value = token.get("logprob") if isinstance(token, Mapping) else getattr(token, "logprob", None)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value > 0:
            return None
        total.append(float(value))
    return math.fsum(total)


@dataclass
class Attempt:
    """One stage's part in one cascade call (an entry of the trail)."""

    stage: int
    model: str
    status: Status = "not_called"
    score: float | None = None
    threshold: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    usage_reported: bool = False
    """The provider reported both token counts."""
    usage_estimated: bool = False
    """The token counts (and so the cost) are an estimate: the provider reported none."""
    cost_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    error: str | None = None
    settle_error: str | None = None
    """Why the budget could not settle this stage's reservation (the answer and its cost are kept)."""
    logprob: float | None = None
    """The answer's log-probability as the provider gave it (``StageOutput.logprob``), if it did."""

    @property
    def called(self) -> bool:
        """Whether the provider was called (and so may have cost money)."""
        return self.status not in ("not_called", "over_budget", "routed_past")

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "model": self.model,
            "status": self.status,
            "score": self.score,
            "threshold": self.threshold,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usage_reported": self.usage_reported,
            "usage_estimated": self.usage_estimated,
            "cost_usd": usd(self.cost_usd),
            "latency_ms": round(self.latency_ms, 3),
            "error": self.error,
            "settle_error": self.settle_error,
            "logprob": self.logprob,
        }


@dataclass
class CascadeResult:
    """The outcome of one cascade call: the answer, who gave it, and every stage's trail entry."""

    output: StageOutput | None
    answer_stage: int | None
    attempts: list[Attempt]
    fallback: bool = False
    """True when no stage was accepted outright and an earlier answer was returned instead."""
    all_last_estimate_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    failures: list[StageFailure] = field(default_factory=list)
    cache_hit: CacheHit | None = None
    """Set when the answer came from the answer cache (no stage was called)."""
    budget_stopped: str | None = None
    """The budget limit that stopped the cascade early, if one did."""
    context: CallContext = field(default_factory=CallContext)
    """The call's context (its scope names the tenant and user the spend belongs to)."""

    @property
    def cost_usd(self) -> Decimal:
        """Total USD of every stage called, rejected ones included."""
        return sum((a.cost_usd for a in self.attempts), Decimal(0))

    @property
    def escalations(self) -> int:
        """How many times the query moved on to a later stage."""
        return max(0, sum(1 for a in self.attempts if a.called) - 1)

    @property
    def model(self) -> str | None:
        if self.cache_hit is not None:
            return self.cache_hit.model
        return None if self.answer_stage is None else self.attempts[self.answer_stage].model

    @property
    def input_tokens(self) -> int:
        return sum(a.input_tokens for a in self.attempts)

    @property
    def output_tokens(self) -> int:
        return sum(a.output_tokens for a in self.attempts)

    def trail(self) -> dict[str, Any]:
        """The record adapters attach to responses; it survives ``json.dumps``: money is a string of the
        exact ``Decimal`` (``"0.000012"``, never an exponent; ``Decimal(trail["cost_usd"])`` gets it back)."""
        return {
            "model": self.model,
            "stage": self.answer_stage,
            "fallback": self.fallback,
            "cost_usd": usd(self.cost_usd),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": round(self.latency_ms, 3),
            "escalations": self.escalations,
            "cache_hit": None
            if self.cache_hit is None
            else {
                "entry_id": self.cache_hit.entry_id,
                "similarity": self.cache_hit.similarity,
                "saved_usd": usd(self.cache_hit.saved_usd),
            },
            "budget_stopped": self.budget_stopped,
            "stages": [a.as_dict() for a in self.attempts],
            **({"tier": self.context.tier} if self.context.tier else {}),  # the caller tier the call ran in
        }


def tool_text(output: StageOutput) -> str:
    """The tool calls of an answer as text, ``name({"arg": ..})`` one a line (what the scorer reads when an
    answer has no text)."""
    return "\n".join(f"{call.name}({json.dumps(dict(call.arguments), sort_keys=True)})" for call in output.tool_calls)
