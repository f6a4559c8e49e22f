"""Prices and the cost tracker: token usage priced in USD as exact ``Decimal``.

Prices of known models come from the maintained ``genai-prices`` package; a user may override any
model's price. A model with no known price is an error at construction, never a silent $0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from shared_scorer.errors import ConfigurationError, UnknownPriceError
from shared_scorer.outcome import usd

if TYPE_CHECKING:
    from shared_scorer.cascade import CascadeResult

MILLION = Decimal(1_000_000)


@runtime_checkable
class Price(Protocol):
    """Anything that turns a call's token usage into USD."""

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """USD for one call."""
        ...


@dataclass(frozen=True)
class TokenPrice:
    """A flat price in USD per million input and output tokens.

    >>> TokenPrice("0.15", "0.60").cost(1000, 500)
    Decimal('0.00045')
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal

    def __init__(self, input_per_mtok: Decimal | str | int | float, output_per_mtok: Decimal | str | int | float):
        object.__setattr__(self, "input_per_mtok", _decimal(input_per_mtok, "input_per_mtok"))
        object.__setattr__(self, "output_per_mtok", _decimal(output_per_mtok, "output_per_mtok"))

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / MILLION


def _decimal(value: Decimal | str | int | float, name: str) -> Decimal:
    # floats go through str() so that 0.15 means 0.15, not 0.1499999999999999944488848768742172978818416595458984375
    try:
        result = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except Exception:
        raise ConfigurationError(f"{name} must be a number of USD per million tokens, got {value!r}") from None
    if not result.is_finite() or result < 0:
        raise ConfigurationError(f"{name} must be a finite, non-negative number, got {value!r}")
    return result


@dataclass(frozen=True)
class CatalogPrice:
    """The price ``genai-prices`` publishes for a model (tiered prices included)."""

    model_ref: str
    provider_id: str | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        from genai_prices import Usage, calc_price

        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return Decimal(calc_price(usage, model_ref=self.model_ref, provider_id=self.provider_id).total_price)


PriceSpec = Price | tuple[Decimal | str | int | float, Decimal | str | int | float] | Mapping[str, object]


def as_price(spec: PriceSpec, model: str) -> Price:
    """Accept a :class:`Price`, a ``(input, output)`` pair or ``{"input_per_mtok":.., "output_per_mtok":..}``."""
    if isinstance(spec, Price):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return TokenPrice(*spec)
    if isinstance(spec, Mapping) and {"input_per_mtok", "output_per_mtok"} <= set(spec):
        return TokenPrice(spec["input_per_mtok"], spec["output_per_mtok"])  # type: ignore[arg-type]
    raise ConfigurationError(
        f"price for model {model!r} must be a Price, an (input, output) pair or a mapping with "
        f"'input_per_mtok' and 'output_per_mtok' (USD per million tokens), got {spec!r}"
    )


def resolve_price(model: str, overrides: Mapping[str, PriceSpec] | None = None) -> Price:
    """The override for ``model`` if given, else its catalogue price; unknown is an error."""
    if overrides and model in overrides:
        return as_price(overrides[model], model)
    from genai_prices import Usage, calc_price

    try:
        calc_price(Usage(input_tokens=1, output_tokens=1), model_ref=model)
    except LookupError:
        raise UnknownPriceError(
            f"no known price for model {model!r}; pass prices={{{model!r}: (input_usd_per_mtok, "
            f"output_usd_per_mtok)}} to set it explicitly"
        ) from None
    return CatalogPrice(model)


@dataclass
class _Totals:
    calls: int = 0
    cost_usd: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, cost: Decimal, input_tokens: int, output_tokens: int) -> None:
        self.calls += 1
        self.cost_usd += cost
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def as_dict(self, money: Callable[[Decimal], object]) -> dict[str, object]:
        return {
            "calls": self.calls,
            "cost_usd": money(self.cost_usd),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


class CostTracker:
    """Totals of every cascade call: USD by model and by stage, calls, escalations.

    Every stage that was called is counted, rejected ones included. Thread- and task-safe (one lock,
    never held across an await). :meth:`summary` survives ``json.dumps`` (money as exact strings);
    ``summary(decimals=True)`` gives the same figures as ``Decimal``.

    >>> tracker = CostTracker()
    >>> tracker.summary()["total_cost_usd"], tracker.summary(decimals=True)["total_cost_usd"]
    ('0', Decimal('0'))
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._calls = 0
            self._failed_calls = 0
            self._escalations = 0
            self._total = Decimal(0)
            self._all_last_estimate = Decimal(0)
            self._by_model: dict[str, _Totals] = {}
            self._by_stage: dict[int, _Totals] = {}
            self._answered_by_stage: dict[int, int] = {}
            self._missing_usage = 0
            self._estimated_usage = 0
            self._cache_hits = 0
            self._cache_saved = Decimal(0)
            self._budget_stops = 0
            self._settle_errors = 0
            self._errors_by_stage: dict[int, int] = {}
            self._errors_by_model: dict[str, int] = {}
            self._invalid_by_stage: dict[int, int] = {}

    def record(self, result: CascadeResult) -> None:
        """Add one finished cascade call (the core calls this; users rarely need to)."""
        with self._lock:
            self._record_attempts(result)
            self._calls += 1
            if result.cache_hit is not None:
                self._cache_hits += 1
                self._cache_saved += result.cache_hit.saved_usd
            if result.budget_stopped is not None:
                self._budget_stops += 1
            if result.answer_stage is not None:
                self._answered_by_stage[result.answer_stage] = self._answered_by_stage.get(result.answer_stage, 0) + 1
            self._escalations += result.escalations
            self._all_last_estimate += result.all_last_estimate_usd

    def record_failure(self, result: CascadeResult) -> None:
        """Add a cascade call in which every stage failed: its spend still counts."""
        with self._lock:
            self._record_attempts(result)
            self._calls += 1
            self._failed_calls += 1
            self._escalations += result.escalations

    def _record_attempts(self, result: CascadeResult) -> None:
        for attempt in result.attempts:
            if not attempt.called:
                continue
            self._total += attempt.cost_usd
            self._by_model.setdefault(attempt.model, _Totals()).add(
                attempt.cost_usd, attempt.input_tokens, attempt.output_tokens
            )
            self._by_stage.setdefault(attempt.stage, _Totals()).add(
                attempt.cost_usd, attempt.input_tokens, attempt.output_tokens
            )
            if attempt.usage_estimated:
                self._estimated_usage += 1
            elif not attempt.usage_reported:
                self._missing_usage += 1
            if attempt.settle_error is not None:
                self._settle_errors += 1
            if attempt.status == "error":
                self._errors_by_stage[attempt.stage] = self._errors_by_stage.get(attempt.stage, 0) + 1
                self._errors_by_model[attempt.model] = self._errors_by_model.get(attempt.model, 0) + 1
            elif attempt.status == "invalid":
                self._invalid_by_stage[attempt.stage] = self._invalid_by_stage.get(attempt.stage, 0) + 1

    @property
    def total_cost_usd(self) -> Decimal:
        """USD spent so far, rejected stages included."""
        with self._lock:
            return self._total

    def summary(self, *, decimals: bool = False) -> dict[str, object]:
        """A snapshot: totals, per model, per stage, and the all-to-last-stage estimate.

        Money is a fixed-point string of the exact amount (``"0.000012"``), so the summary survives
        ``json.dumps``; with ``decimals=True`` it is the ``Decimal`` itself. ``errors_by_stage`` and
        ``errors_by_model`` count stage calls that raised (a misspelt model shows up here),
        ``invalid_by_stage`` answers that failed validation, ``settle_errors`` stage calls whose budget
        settlement failed (their cost is in the totals all the same).

        ``estimated_cost_if_last_stage_only_usd`` is an estimate: for each call it prices the first
        stage's input tokens and the returned answer's output tokens at the last stage's price (exact
        where the last stage answered).
        """
        money: Callable[[Decimal], object] = (lambda d: d) if decimals else usd
        with self._lock:
            return {
                "calls": self._calls,
                "failed_calls": self._failed_calls,
                "escalations": self._escalations,
                "total_cost_usd": money(self._total),
                "by_model": {m: t.as_dict(money) for m, t in self._by_model.items()},
                "by_stage": {s: t.as_dict(money) for s, t in sorted(self._by_stage.items())},
                "answered_by_stage": dict(sorted(self._answered_by_stage.items())),
                "stage_calls_without_usage": self._missing_usage,
                "stage_calls_with_estimated_usage": self._estimated_usage,
                "errors_by_stage": dict(sorted(self._errors_by_stage.items())),
                "errors_by_model": dict(sorted(self._errors_by_model.items())),
                "invalid_by_stage": dict(sorted(self._invalid_by_stage.items())),
                "settle_errors": self._settle_errors,
                "cache_hits": self._cache_hits,
                "cache_saved_usd": money(self._cache_saved),
                "budget_stops": self._budget_stops,
                "estimated_cost_if_last_stage_only_usd": money(self._all_last_estimate),
                "estimated_savings_usd": money(
                    self._all_last_estimate - self._total if self._calls > self._failed_calls else Decimal(0)
                ),
            }
