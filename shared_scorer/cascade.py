"""The one escalation loop: (cache,) reserve, call a stage, validate, score, accept or escalate.

The decisions live in :meth:`Cascade._decide`, a generator that *asks* for what it needs (a cache
lookup, a budget reservation, a stage call, a score) and never performs I/O itself. The drivers run it:
:meth:`Cascade.run` (sync), :meth:`Cascade.arun` (async) and :meth:`Cascade.stream` /
:meth:`Cascade.astream` (the last stage streamed live). So sync, async and streaming calls, and both
framework adapters, cannot disagree on which answer is returned.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from shared_scorer.costs import CostTracker, Price, PriceSpec, resolve_price
from shared_scorer.errors import CascadeError, ConfigurationError, FrugalError, StageFailure
from shared_scorer.hooks import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    AnswerCacheHook,
    BudgetExceeded,
    BudgetHook,
    CacheHit,
    CallContext,
    Reservation,
)
from shared_scorer.outcome import Attempt, CascadeResult, StageOutput, ToolCall
from shared_scorer.scoring.base import Scorer, ScoreRequest, as_scorer, check_score

__all__ = [
    "Attempt",
    "Cascade",
    "CascadeResult",
    "StageOutput",
    "ToolCall",
    "cascade_for",
    "check_thresholds",
    "max_output_tokens_of",
]

log = logging.getLogger(__name__)

ReturnPolicy = Literal["last", "best"]
BudgetPolicy = Literal["stop", "raise"]
Validator = Callable[[StageOutput], "str | None"]
StageCall = Callable[[], StageOutput]
AsyncStageCall = Callable[[], Awaitable[StageOutput]]
LiveStream = Callable[[], Generator[Any, None, StageOutput]]
AsyncLiveStream = Callable[[Callable[[StageOutput], None]], AsyncIterator[Any]]


@dataclass
class _Call:
    stage: int


@dataclass
class _Called:
    output: StageOutput | None
    error: BaseException | None
    latency_ms: float


@dataclass
class _Lookup:
    query: str
    context: CallContext


@dataclass
class _Store:
    query: str
    answer: str
    context: CallContext
    model: str
    score: float | None
    cost_usd: Decimal


@dataclass
class _Reserve:
    context: CallContext
    model: str
    amount: Decimal


@dataclass
class _Settle:
    reservation: Reservation
    actual: Decimal


class _Failed(Exception):
    def __init__(self, result: CascadeResult, error: FrugalError | None = None) -> None:
        self.result = result
        self.error = error


class Cascade:
    """An ordered list of models (cheapest first), a scorer and one threshold per stage but the last.

    The cascade itself calls nothing: adapters pass one call per stage to :meth:`run` / :meth:`arun`.
    ``answer_cache`` is consulted before the first stage; ``budget`` reserves each stage's worst-case
    cost before it is called. When a stage cannot be afforded, ``on_budget="stop"`` returns the best
    answer already in hand (else raises), ``"raise"`` raises :class:`~shared_scorer.hooks.BudgetExceeded`.

    >>> cascade = Cascade(["small", "big"], thresholds=[0.5], scorer=lambda q, a: 0.9,
    ...                   prices={"small": (1, 2), "big": (10, 20)})
    >>> result = cascade.run("2+2?", [lambda: StageOutput("4", 10, 1), lambda: StageOutput("4", 10, 1)])
    >>> result.model, result.cost_usd
    ('small', Decimal('0.000012'))
    """

    def __init__(
        self,
        models: Sequence[str],
        thresholds: Sequence[float],
        scorer: Scorer | Callable[..., float],
        *,
        prices: Mapping[str, PriceSpec] | None = None,
        return_policy: ReturnPolicy = "last",
        tracker: CostTracker | None = None,
        answer_cache: AnswerCacheHook | None = None,
        budget: BudgetHook | None = None,
        on_budget: BudgetPolicy = "stop",
    ) -> None:
        self.models = list(models)
        if not self.models:
            raise ConfigurationError("a cascade needs at least one stage")
        self.thresholds = check_thresholds(thresholds, len(self.models))
        if return_policy not in ("last", "best"):
            raise ConfigurationError(f"return_policy must be 'last' or 'best', got {return_policy!r}")
        if on_budget not in ("stop", "raise"):
            raise ConfigurationError(f"on_budget must be 'stop' or 'raise', got {on_budget!r}")
        self.return_policy: ReturnPolicy = return_policy
        self.on_budget: BudgetPolicy = on_budget
        self.scorer = as_scorer(scorer)
        self.prices: list[Price] = [resolve_price(m, prices) for m in self.models]
        self.tracker = tracker if tracker is not None else CostTracker()
        self.answer_cache = answer_cache
        self.budget = budget

    # ------------------------------------------------------------------ the decisions

    def _decide(
        self, query: str, validate: Validator | None, context: CallContext
    ) -> Generator[object, Any, CascadeResult]:
        """Yield steps (``_Lookup``, ``_Reserve``, ``_Call``, ``ScoreRequest``, ``_Settle``, ``_Store``)."""
        n = len(self.models)
        attempts = [Attempt(stage=i, model=m) for i, m in enumerate(self.models)]
        if self.answer_cache is not None and context.cacheable:
            hit: CacheHit | None = yield _Lookup(query, context)
            if hit is not None:
                output = StageOutput(hit.answer, 0, 0)
                return CascadeResult(output=output, answer_stage=None, attempts=attempts, cache_hit=hit)
        failures: list[StageFailure] = []
        outputs: dict[int, StageOutput] = {}
        answers: list[str] = []
        best: int | None = None
        for i in range(n):
            attempt = attempts[i]
            last = i == n - 1
            attempt.threshold = None if last else self.thresholds[i]
            reservation: Reservation | None = None
            if self.budget is not None:
                worst = self.prices[i].cost(
                    context.input_tokens_bound, context.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
                )
                granted = yield _Reserve(context, attempt.model, worst)
                if isinstance(granted, BudgetExceeded):
                    attempt.status = "over_budget"
                    attempt.error = str(granted)
                    if self.on_budget == "stop" and best is not None:
                        attempts[best].status = "accepted"
                        result = self._result(attempts, best, outputs, failures, fallback=True)
                        result.budget_stopped = granted.limit
                        return result
                    raise _Failed(self._result(attempts, None, outputs, failures, fallback=False), granted)
                reservation = granted
            called: _Called = yield _Call(i)
            attempt.latency_ms = called.latency_ms
            if called.output is not None:
                self._price(attempt, called.output)
            if reservation is not None:
                yield _Settle(reservation, attempt.cost_usd)
            if called.error is not None or called.output is None:
                attempt.status = "error"
                attempt.error = f"{type(called.error).__name__}: {called.error}"
                failures.append(StageFailure(i, attempt.model, "error", attempt.error))
                continue
            output = called.output
            reason = _check_output(output) or (validate(output) if validate else None)
            if reason is not None:
                attempt.status = "invalid"
                attempt.error = reason
                failures.append(StageFailure(i, attempt.model, "invalid", reason))
                continue
            outputs[i] = output
            if not last or self.return_policy == "best":
                request = ScoreRequest(
                    query, output.text or _tool_text(output), attempt.model, i, tuple(answers), output.output_tokens
                )
                attempt.score = check_score((yield request), request)
                if best is None or attempt.score > (attempts[best].score or 0.0):
                    best = i
            answers.append(output.text)
            accepted = (last and self.return_policy == "last") or (
                not last and attempt.score is not None and attempt.score >= self.thresholds[i]
            )
            if accepted:
                attempt.status = "accepted"
                result = self._result(attempts, i, outputs, failures, fallback=False)
                yield from self._store(query, context, result)
                return result
            attempt.status = "rejected"
        if best is None:
            raise _Failed(self._result(attempts, None, outputs, failures, fallback=False))
        # Under "best" this is the normal end; under "last" only a failed last stage gets here.
        attempts[best].status = "accepted"
        fallback = attempts[n - 1].status in ("error", "invalid")
        result = self._result(attempts, best, outputs, failures, fallback=fallback)
        if not fallback:
            yield from self._store(query, context, result)
        return result

    def _store(self, query: str, context: CallContext, result: CascadeResult) -> Generator[object, Any, None]:
        """Only answers the cascade accepted outright, with text and no tool calls, are cached."""
        output = result.output
        if self.answer_cache is None or not context.cacheable or output is None or output.tool_calls:
            return
        if result.answer_stage is None or not output.text.strip():
            return
        attempt = result.attempts[result.answer_stage]
        yield _Store(query, output.text, context, attempt.model, attempt.score, result.cost_usd)

    def _price(self, attempt: Attempt, output: StageOutput) -> None:
        attempt.usage_estimated = bool(output.usage_estimated)
        attempt.usage_reported = (
            output.input_tokens is not None and output.output_tokens is not None and not attempt.usage_estimated
        )
        attempt.input_tokens = output.input_tokens or 0
        attempt.output_tokens = output.output_tokens or 0
        attempt.cost_usd = self.prices[attempt.stage].cost(attempt.input_tokens, attempt.output_tokens)

    def _result(
        self,
        attempts: list[Attempt],
        stage: int | None,
        outputs: dict[int, StageOutput],
        failures: list[StageFailure],
        *,
        fallback: bool,
    ) -> CascadeResult:
        result = CascadeResult(
            output=None if stage is None else outputs[stage],
            answer_stage=stage,
            attempts=attempts,
            fallback=fallback,
            failures=failures,
        )
        if stage is not None:
            last = len(self.models) - 1
            if stage == last:
                result.all_last_estimate_usd = attempts[last].cost_usd
            else:
                first = next(a for a in attempts if a.called)
                result.all_last_estimate_usd = self.prices[last].cost(first.input_tokens, attempts[stage].output_tokens)
        return result

    # ------------------------------------------------------------------ drivers

    def run(
        self,
        query: str,
        calls: Sequence[StageCall],
        validate: Validator | None = None,
        context: CallContext | None = None,
    ) -> CascadeResult:
        """Run the cascade synchronously; ``calls[i]()`` calls stage ``i``'s provider."""
        for item in self._sync(query, calls, None, validate, context):
            if isinstance(item, CascadeResult):
                return item
        raise AssertionError("the cascade ended without a result")  # pragma: no cover

    def stream(
        self,
        query: str,
        calls: Sequence[StageCall],
        live_last: LiveStream | None,
        validate: Validator | None = None,
        context: CallContext | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`run`, but the last stage (under ``return_policy="last"``) streams live.

        Earlier stages are buffered until scored. ``live_last()`` is a generator that yields the
        adapter's chunks and returns the assembled :class:`StageOutput`; its chunks are yielded here as
        they come. The final item is the :class:`CascadeResult`. A live stream that fails before its
        first chunk escalates like any error; one that fails mid-stream raises (its chunks are out).
        """
        return self._sync(query, calls, live_last, validate, context)

    def _sync(
        self,
        query: str,
        calls: Sequence[StageCall],
        live_last: LiveStream | None,
        validate: Validator | None,
        context: CallContext | None,
    ) -> Iterator[Any]:
        self._check_calls(calls)
        started = time.perf_counter()
        context = context or CallContext()
        steps = self._decide(query, validate, context)
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                if isinstance(step, _Call) and live_last is not None and self._streams_live(step.stage):
                    value = yield from _live(live_last)
                else:
                    value = self._sync_step(step, calls)
        except StopIteration as stop:
            yield self._finish(stop.value, started, context)
        except _Failed as failed:
            raise self._fail(failed, started, context) from None

    async def arun(
        self,
        query: str,
        calls: Sequence[AsyncStageCall],
        validate: Validator | None = None,
        context: CallContext | None = None,
    ) -> CascadeResult:
        """Run the cascade on the event loop; ``await calls[i]()`` calls stage ``i``."""
        async for item in self.astream(query, calls, None, validate, context):
            if isinstance(item, CascadeResult):
                return item
        raise AssertionError("the cascade ended without a result")  # pragma: no cover

    async def astream(
        self,
        query: str,
        calls: Sequence[AsyncStageCall],
        live_last: AsyncLiveStream | None,
        validate: Validator | None = None,
        context: CallContext | None = None,
    ) -> AsyncIterator[Any]:
        """The async twin of :meth:`stream`; ``live_last(done)`` yields chunks and calls ``done(output)``."""
        self._check_calls(calls)
        started = time.perf_counter()
        context = context or CallContext()
        steps = self._decide(query, validate, context)
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                if isinstance(step, _Call) and live_last is not None and self._streams_live(step.stage):
                    box: list[_Called] = []
                    async for chunk in _alive(live_last, box):
                        yield chunk
                    value = box[0]
                else:
                    value = await self._async_step(step, calls)
        except StopIteration as stop:
            yield self._finish(stop.value, started, context)
        except _Failed as failed:
            raise self._fail(failed, started, context) from None

    def _streams_live(self, stage: int) -> bool:
        return stage == len(self.models) - 1 and self.return_policy == "last"

    def _sync_step(self, step: object, calls: Sequence[StageCall]) -> Any:
        if isinstance(step, ScoreRequest):
            return self.scorer.score(step)
        if isinstance(step, _Call):
            started = time.perf_counter()
            try:
                output = calls[step.stage]()
            except Exception as exc:
                return _Called(None, exc, _ms(started))
            return _Called(output, None, _ms(started))
        return self._hook_step(step, asynchronous=False)

    async def _async_step(self, step: object, calls: Sequence[AsyncStageCall]) -> Any:
        if isinstance(step, ScoreRequest):
            ascore = getattr(self.scorer, "ascore", None)
            return await ascore(step) if ascore is not None else self.scorer.score(step)
        if isinstance(step, _Call):
            started = time.perf_counter()
            try:
                output = await calls[step.stage]()
            except Exception as exc:
                return _Called(None, exc, _ms(started))
            return _Called(output, None, _ms(started))
        pending = self._hook_step(step, asynchronous=True)
        return await pending if isinstance(pending, Awaitable) else pending

    def _hook_step(self, step: object, *, asynchronous: bool) -> Any:
        """Cache and budget steps; on the event loop, a hook's ``a``-prefixed method is used if it has one."""

        def method(hook: object, name: str) -> Callable[..., Any]:
            async_method = getattr(hook, "a" + name, None) if asynchronous else None
            return async_method or getattr(hook, name)  # type: ignore[no-any-return]

        if isinstance(step, _Reserve):
            assert self.budget is not None
            try:
                reserve = method(self.budget, "reserve")(step.context, step.model, step.amount)
            except BudgetExceeded as exc:
                return exc
            if asynchronous and isinstance(reserve, Awaitable):
                return _catch_budget(reserve)
            return reserve
        if isinstance(step, _Settle):
            assert self.budget is not None
            return method(self.budget, "settle")(step.reservation, step.actual)
        if isinstance(step, _Lookup):
            assert self.answer_cache is not None
            return _tolerant(method(self.answer_cache, "lookup"), "lookup", step.query, step.context)
        if isinstance(step, _Store):
            assert self.answer_cache is not None
            store = method(self.answer_cache, "store")
            return _tolerant(
                store, "store", step.query, step.answer, step.context,
                model=step.model, score=step.score, cost_usd=step.cost_usd,
            )  # fmt: skip
        raise AssertionError(f"unknown cascade step {step!r}")  # pragma: no cover

    def _finish(self, result: CascadeResult, started: float, context: CallContext) -> CascadeResult:
        result.latency_ms = _ms(started)
        result.context = context
        self.tracker.record(result)
        return result

    def _fail(self, failed: _Failed, started: float, context: CallContext) -> FrugalError:
        failed.result.latency_ms = _ms(started)
        failed.result.context = context
        self.tracker.record_failure(failed.result)
        error: FrugalError = failed.error or CascadeError(failed.result.failures)
        error.result = failed.result  # type: ignore[attr-defined]
        return error

    def _check_calls(self, calls: Sequence[object]) -> None:
        if len(calls) != len(self.models):
            raise ConfigurationError(f"expected {len(self.models)} stage calls, got {len(calls)}")


async def _catch_budget(pending: Awaitable[Reservation]) -> Reservation | BudgetExceeded:
    try:
        return await pending
    except BudgetExceeded as exc:
        return exc


def _tolerant(fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> Any:
    """A failing answer cache must not fail the answer: a failed lookup is a miss, a failed store is skipped."""
    try:
        value = fn(*args, **kwargs)
    except Exception:
        log.warning("answer cache %s failed; going on without it", what, exc_info=True)
        return None
    if isinstance(value, Awaitable):
        return _atolerant(value, what)
    return value


async def _atolerant(pending: Awaitable[Any], what: str) -> Any:
    try:
        return await pending
    except Exception:
        log.warning("answer cache %s failed; going on without it", what, exc_info=True)
        return None


def _live(live_last: LiveStream) -> Generator[Any, None, _Called]:
    started = time.perf_counter()
    stream = live_last()
    emitted = False
    try:
        while True:
            chunk = next(stream)
            emitted = True
            yield chunk
    except StopIteration as stop:
        return _Called(_kept(stop.value), None, _ms(started))
    except Exception as exc:
        if emitted:
            raise
        return _Called(None, exc, _ms(started))


async def _alive(live_last: AsyncLiveStream, box: list[_Called]) -> AsyncIterator[Any]:
    started = time.perf_counter()
    done: list[StageOutput] = []
    emitted = False
    try:
        async for chunk in live_last(done.append):
            emitted = True
            yield chunk
    except Exception as exc:
        if emitted:
            raise
        box.append(_Called(None, exc, _ms(started)))
        return
    if not done:
        box.append(_Called(None, RuntimeError("live stream ended without an output"), _ms(started)))
    else:
        box.append(_Called(_kept(done[0]), None, _ms(started)))


def _kept(output: Any) -> Any:
    """A live-streamed reply cut at its output limit whose text the caller already received is kept as
    the answer (it cannot be taken back); one with no text is still invalid, and the cascade falls back."""
    if isinstance(output, StageOutput) and output.truncated and output.text.strip():
        return replace(output, truncated=False)
    return output


def _check_output(output: StageOutput) -> str | None:
    if not isinstance(output, StageOutput):
        return f"stage returned {type(output).__name__}, expected StageOutput"
    if output.problems:
        return "; ".join(output.problems)
    if output.truncated:
        return "cut at the output-token limit (finish_reason 'length')"
    if not output.text.strip() and not output.tool_calls:
        return "empty answer: no text and no tool calls"
    return None


def _tool_text(output: StageOutput) -> str:
    import json

    return "\n".join(f"{call.name}({json.dumps(dict(call.arguments), sort_keys=True)})" for call in output.tool_calls)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def cascade_for(
    settings: Any, *, is_stage: Callable[[object], bool], what: str, name_of: Callable[[Any], str]
) -> Cascade:
    """The cascade an adapter model delegates to, checked at construction.

    ``settings`` is the adapter model: it has ``stages``, ``thresholds``, ``scorer``, ``prices``,
    ``return_policy``, ``cost_tracker``, ``answer_cache``, ``budget`` and ``on_budget``.
    """
    stages = list(settings.stages)
    if not stages:
        raise ConfigurationError(f"{type(settings).__name__} needs at least one stage")
    for i, stage in enumerate(stages):
        if not is_stage(stage):
            raise ConfigurationError(f"stage {i} must be {what}, got {type(stage).__name__}")
    return Cascade(
        [name_of(stage) for stage in stages],
        settings.thresholds,
        settings.scorer,
        prices=settings.prices,
        return_policy=settings.return_policy,
        tracker=settings.cost_tracker,
        answer_cache=settings.answer_cache,
        budget=settings.budget,
        on_budget=settings.on_budget,
    )


def max_output_tokens_of(stages: Sequence[object]) -> int | None:
    """The largest ``max_tokens`` any stage may write, when every stage sets one."""
    limits = [getattr(stage, "max_tokens", None) for stage in stages]
    ints = [x for x in limits if isinstance(x, int)]
    return max(ints) if len(ints) == len(limits) else None


def check_thresholds(thresholds: Sequence[float], stages: int) -> list[float]:
    """One threshold per stage but the last, each a number in [0, 1]."""
    values = list(thresholds)
    if len(values) != stages - 1:
        raise ConfigurationError(
            f"{stages} stages need {stages - 1} threshold(s) (one per stage but the last), got {len(values)}"
        )
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ConfigurationError(f"threshold {i} must be a number in [0, 1], got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ConfigurationError(f"threshold {i} must be in [0, 1], got {value!r}")
    return [float(v) for v in values]
