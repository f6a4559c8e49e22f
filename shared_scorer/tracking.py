"""The cost tracker: every cascade call's stages priced and added up, and the warnings of failing stages.

:class:`CostTracker` is the default :class:`~shared_scorer.protocols.CostRecorder` of a cascade
(``shared_scorer.budget.LedgerCostTracker`` also writes each call to a ledger).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from shared_scorer.outcome import usd

if TYPE_CHECKING:
    from shared_scorer.outcome import CascadeResult

log = logging.getLogger("shared_scorer.cascade")


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


class StageFailureWarnings:
    """Logs a warning when a stage's provider call raises: at most once per stage per ``window_s``
    seconds, with the number of failures since the last warning, so a stage that fails on every call
    (a misspelt model answering 404) is visible without flooding the log.

    >>> warnings = StageFailureWarnings(window_s=60.0, clock=lambda: 0.0)
    >>> warnings.failed(0, "gpt-4o-mni", "NotFoundError: 404")
    True
    >>> warnings.failed(0, "gpt-4o-mni", "NotFoundError: 404")  # counted, not logged again
    False
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last_warned: dict[int, float] = {}
        self._pending: dict[int, tuple[int, float]] = {}  # stage -> (failures since last warning, first at)

    def failed(self, stage: int, model: str, error: str) -> bool:
        """Count one failure of ``stage``; log a warning if none was logged for it within the window."""
        now = self.clock()
        with self._lock:
            count, first = self._pending.get(stage, (0, now))
            count += 1
            last = self._last_warned.get(stage)
            if last is not None and now - last < self.window_s:
                self._pending[stage] = (count, first)
                return False
            self._last_warned[stage] = now
            self._pending.pop(stage, None)
        log.warning(
            "stage %d (%s) failed %d time(s) in the last %.0f s; queries go on to the next stage. Last error: %s",
            stage, model, count, now - first, error,
        )  # fmt: skip
        return True
