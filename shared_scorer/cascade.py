"""The one escalation loop: (cache,) reserve, call a stage, validate, score, accept or escalate.

The decisions live in :meth:`Cascade._decide`, a generator that *asks* for what it needs (a cache
lookup, a budget reservation, a stage call, a score) and never performs I/O itself. The drivers run it:
:meth:`Cascade.run` (sync), :meth:`Cascade.arun` (async) and :meth:`Cascade.stream` /
:meth:`Cascade.astream` (the last stage streamed live). So sync, async and streaming calls, and both
framework adapters, cannot disagree on which answer is returned.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from shared_scorer.context import CallContext, check_max_tokens
from shared_scorer.costs import Price, PriceSpec, resolve_price
from shared_scorer.errors import (
    BudgetExceeded,
    CascadeError,
    ConfigurationError,
    FrugalError,
    LedgerError,
    StageFailure,
)
from shared_scorer.outcome import Attempt, CascadeResult, StageOutput, usd
from shared_scorer.protocols import (
    AnswerCacheHook,
    AsyncAnswerCacheHook,
    AsyncBudgetHook,
    AsyncCostRecorder,
    BudgetHook,
    CacheHit,
    Reservation,
)
from shared_scorer.scoring.base import AsyncScorer, Scorer, ScoreRequest, as_scorer, check_score
from shared_scorer.steps import StepPolicy, as_step_policy, step_answer, step_kind
from shared_scorer.streaming import (
    AsyncLiveStream,
    Called,
    LiveProgress,
    LiveStream,
    abandoned,
    alive,
    elapsed_ms,
    live,
)
from shared_scorer.tracking import CostTracker, StageFailureWarnings

__all__ = ["Cascade", "check_thresholds"]

log = logging.getLogger(__name__)

ReturnPolicy = Literal["last", "best"]
BudgetPolicy = Literal["stop", "raise"]
Validator = Callable[[StageOutput], "str | None"]
StageCall = Callable[[], StageOutput]
AsyncStageCall = Callable[[], Awaitable[StageOutput]]


@dataclass
class _Call:
    stage: int


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
class _Route:
    query: str


@dataclass
class _Reserve:
    context: CallContext
    model: str
    amount: Decimal


@dataclass
class _Settle:
    reservation: Reservation
    actual: Decimal


@dataclass
class _RateToolCall:
    """A tool-call step to be rated by the step policy's own scorer (``StepPolicy(tool_calls=scorer)``)."""

    request: ScoreRequest
    scorer: Scorer


@dataclass
class _HookFailed:
    """A budget call that raised something other than :class:`BudgetExceeded` (the ledger is down, say)."""

    error: Exception


class _Failed(Exception):
    def __init__(self, result: CascadeResult, error: FrugalError | None = None) -> None:
        self.result = result
        self.error = error


class Cascade:
    """An ordered list of models (cheapest first), a scorer and one threshold per stage but the last.

    The cascade itself calls nothing: adapters pass one call per stage to :meth:`run` / :meth:`arun`.
    ``answer_cache`` is consulted before the first stage; ``budget`` reserves each stage's worst-case
    cost before it is called. When a stage cannot be afforded, ``on_budget="stop"`` returns the best
    answer already in hand (else raises), ``"raise"`` raises :class:`~shared_scorer.errors.BudgetExceeded`.

    The worst case of stage ``i`` is its price for ``context.input_tokens_bound`` input tokens and
    :meth:`stage_max_tokens` output tokens: the smaller of the call's own ``max_tokens``
    (``context.max_output_tokens``) and ``output_limits[i]``, the most that stage writes. With a budget,
    a stage whose limit is ``None`` is an error at construction; with ``output_limits`` not given at all,
    every budgeted call must carry ``max_output_tokens`` (else a :class:`ConfigurationError` before any
    provider call). Nothing is guessed. A call must send each stage at most :meth:`stage_max_tokens`.

    Budgets fail closed: when the budget cannot reserve (its ledger is down) no provider is called and
    :class:`~shared_scorer.errors.LedgerError` is raised. When a settlement fails after the provider was
    paid, the answer is kept, the cost is still recorded by the tracker, the trail marks the stage's
    ``settle_error`` and an error is logged with the amount and the reservation id.

    A stage that raises is logged (a ``logging`` warning, at most once per stage per
    :class:`StageFailureWarnings` window, with the count) and counted in the tracker's summary.

    ``step_policy`` (a :class:`~shared_scorer.steps.StepPolicy`, or what its ``tool_calls`` takes) says how
    an agent's steps are judged. By default (``"validate"``) a reply with tool calls is accepted when the
    call's ``validate`` passes (every call names an offered tool and fits its schema), with no score, and
    escalates otherwise; ``"score"`` rates it with ``scorer``, a scorer given there rates it instead. Final
    answers are always rated by ``scorer``.

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
        output_limits: Sequence[int | None] | None = None,
        step_policy: StepPolicy | str | Scorer | Callable[..., float] | None = None,
        gates: Sequence[float | None] | None = None,
        router: Router | None = None,
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
        self.output_limits: list[int | None] = self._check_limits(output_limits)
        self.gates, self.router = _check_gates(gates, router, self.models)
        self.failure_warnings = StageFailureWarnings()
        self.step_policy = as_step_policy(step_policy)

    def _check_limits(self, limits: Sequence[int | None] | None) -> list[int | None]:
        if limits is None:
            return [None] * len(self.models)
        values = list(limits)
        if len(values) != len(self.models):
            raise ConfigurationError(
                f"{len(self.models)} stages need {len(self.models)} output_limits, got {len(values)}"
            )
        checked = [check_max_tokens(v, f"output_limits[{i}] ({self.models[i]})") for i, v in enumerate(values)]
        if self.budget is not None:
            for i, value in enumerate(checked):
                if value is None:
                    raise ConfigurationError(_no_limit(i, self.models[i]))
        return checked

    def stage_max_tokens(self, stage: int, context: CallContext) -> int | None:
        """The most output tokens stage ``stage`` may write on this call: the smaller of the call's own
        ``max_tokens`` and the stage's output limit (``None`` when neither is known). Adapters send this
        as the stage's ``max_tokens``, so a call can ask for less than a stage's limit, never more."""
        known = [x for x in (context.max_output_tokens, self.output_limits[stage]) if x is not None]
        return min(known) if known else None

    def worst_case(self, stage: int, context: CallContext) -> Decimal:
        """What stage ``stage`` can cost at most on this call (what a budget reserves before calling it)."""
        tokens = self.stage_max_tokens(stage, context)
        if tokens is None:
            raise ConfigurationError(_no_limit(stage, self.models[stage]) + ", or give this call a max_tokens")
        return self.prices[stage].cost(context.input_tokens_bound, tokens)

    # ------------------------------------------------------------------ the decisions

    def _decide(
        self, query: str, validate: Validator | None, context: CallContext
    ) -> Generator[object, Any, CascadeResult]:
        """Yield steps (``_Lookup``, ``_Reserve``, ``_Call``, ``ScoreRequest``, ``_RateToolCall``, ``_Settle``,
        ``_Store``)."""
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
        routed: Sequence[float | None] | None = None
        for i in range(n):
            attempt = attempts[i]
            last = i == n - 1
            attempt.threshold = None if last else self.thresholds[i]
            gate = self.gates[i]
            if gate is not None and not last:
                if routed is None:
                    routed = yield _Route(query)
                predicted = routed[i] if i < len(routed) else None
                if predicted is not None and predicted < gate:
                    attempt.status = "routed_past"
                    attempt.score = float(predicted)
                    continue
            reservation: Reservation | None = None
            if self.budget is not None:
                granted = yield _Reserve(context, attempt.model, self.worst_case(i, context))
                if isinstance(granted, _HookFailed):
                    attempt.error = f"budget reserve failed: {type(granted.error).__name__}: {granted.error}"
                    error = LedgerError(
                        f"the budget could not reserve for stage {i} ({attempt.model}): "
                        f"{type(granted.error).__name__}: {granted.error}; no provider was called"
                    )
                    error.__cause__ = granted.error
                    raise _Failed(self._result(attempts, None, outputs, failures, fallback=False), error)
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
            called: Called = yield _Call(i)
            attempt.latency_ms = called.latency_ms
            if called.output is not None:
                self._price(attempt, called.output)
            if reservation is not None:
                settled = yield _Settle(reservation, attempt.cost_usd)
                if isinstance(settled, _HookFailed):
                    attempt.settle_error = f"{type(settled.error).__name__}: {settled.error}"
            if called.error is not None or called.output is None:
                attempt.status = "error"
                attempt.error = f"{type(called.error).__name__}: {called.error}"
                failures.append(StageFailure(i, attempt.model, "error", attempt.error, called.error))
                self.failure_warnings.failed(i, attempt.model, attempt.error)
                continue
            output = called.output
            reason = (
                _check_output(output)
                or (validate(output) if validate else None)
                or self.step_policy.unchecked(output, validate is not None)
            )
            if reason is not None:
                attempt.status = "invalid"
                attempt.error = reason
                failures.append(StageFailure(i, attempt.model, "invalid", reason))
                continue
            outputs[i] = output
            attempt.logprob = _logprob(getattr(output, "logprob", None))
            # a tool-call step that passed validation is accepted on it (StepPolicy(tool_calls="validate"))
            validated = step_kind(output) == "tool_call" and self.step_policy.validates_tool_calls
            if not validated and (not last or self.return_policy == "best"):
                request = ScoreRequest(
                    query,
                    step_answer(output),
                    attempt.model,
                    i,
                    tuple(answers),
                    output.output_tokens,
                    logprob=attempt.logprob,
                    system=context.system,
                    history=context.history,
                    tool_results=context.tool_results,
                    profile=context.profile,
                )
                attempt.score = check_score((yield self._rating(request, output)), request)
                if best is None or attempt.score > (attempts[best].score or 0.0):
                    best = i
            answers.append(output.text)
            accepted = (
                validated
                or (last and self.return_policy == "last")
                or (not last and attempt.score is not None and attempt.score >= self.thresholds[i])
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

    def _rating(self, request: ScoreRequest, output: StageOutput) -> ScoreRequest | _RateToolCall:
        """The step that rates ``output``: its request for the cascade's scorer, or, for a tool-call step
        under a policy with a tool-call scorer, that scorer's step."""
        scorer = self.step_policy.tool_call_scorer
        if scorer is None or step_kind(output) != "tool_call":
            return request
        return _RateToolCall(request, scorer)

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
        """Bill the stage on its token counts; a count that is not a whole number >= 0 is taken as 0 and
        the usage as not reported (a negative count must never lower a cost or credit a budget)."""
        input_tokens = _tokens(getattr(output, "input_tokens", None))
        output_tokens = _tokens(getattr(output, "output_tokens", None))
        attempt.usage_estimated = getattr(output, "usage_estimated", False) is True
        attempt.usage_reported = input_tokens is not None and output_tokens is not None and not attempt.usage_estimated
        attempt.input_tokens = input_tokens or 0
        attempt.output_tokens = output_tokens or 0
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
        progress: LiveProgress | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`run`, but the last stage (under ``return_policy="last"``) streams live.

        Earlier stages are buffered until scored. ``live_last()`` is a generator that yields the
        adapter's chunks and returns the assembled :class:`StageOutput`; its chunks are yielded here as
        they come. The final item is the :class:`CascadeResult`. A live stream that fails before its
        first chunk escalates like any error; one that fails mid-stream raises (its chunks are out).

        When the caller stops reading while the last stage streams (the generator is closed), the
        stage is settled and recorded at an estimate of what it produced so far: the prompt and text
        the adapter's live stream put in ``progress`` (flagged ``usage_estimated``), not left held.
        """
        return self._sync(query, calls, live_last, validate, context, progress)

    def _sync(
        self,
        query: str,
        calls: Sequence[StageCall],
        live_last: LiveStream | None,
        validate: Validator | None,
        context: CallContext | None,
        progress: LiveProgress | None = None,
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
                    live_started = time.perf_counter()
                    try:
                        value = yield from live(live_last)
                    except GeneratorExit:  # the caller stopped reading: settle what the stage produced so far
                        called = Called(abandoned(progress, self.models[step.stage]), None, elapsed_ms(live_started))
                        self._abandon(steps, called, calls, started, context)
                        raise
                else:
                    value = self._sync_step(step, calls)
        except StopIteration as stop:
            yield self._finish(stop.value, started, context)
        except _Failed as failed:
            error = self._fail(failed, started, context)
            raise error from error.__cause__

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
        progress: LiveProgress | None = None,
    ) -> AsyncIterator[Any]:
        """The async twin of :meth:`stream`; ``live_last(done)`` yields chunks and calls ``done(output)``.
        A stream closed (``aclose()``) or cancelled while the last stage streams is settled like
        :meth:`stream`'s."""
        self._check_calls(calls)
        started = time.perf_counter()
        context = context or CallContext()
        steps = self._decide(query, validate, context)
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                if isinstance(step, _Call) and live_last is not None and self._streams_live(step.stage):
                    box: list[Called] = []
                    live_stream = alive(live_last, box)
                    live_started = time.perf_counter()
                    try:
                        async for chunk in live_stream:
                            yield chunk
                    except (GeneratorExit, asyncio.CancelledError):  # the caller stopped reading
                        await live_stream.aclose()
                        called = Called(abandoned(progress, self.models[step.stage]), None, elapsed_ms(live_started))
                        await self._aabandon(steps, called, calls, started, context)
                        raise
                    value = box[0]
                else:
                    value = await self._async_step(step, calls)
        except StopIteration as stop:
            result = self._stamp(stop.value, started, context)
            await self._arecord(result, failed=False)
            yield result
        except _Failed as failed:
            error = self._error(failed, started, context)
            await self._arecord(failed.result, failed=True)
            raise error from error.__cause__

    def _streams_live(self, stage: int) -> bool:
        return stage == len(self.models) - 1 and self.return_policy == "last"

    def _abandon(
        self, steps: Generator[object, Any, CascadeResult], called: Called, calls: Sequence[StageCall],
        started: float, context: CallContext,
    ) -> None:  # fmt: skip
        """Finish a call whose caller stopped reading its live stream: the stage's settlement (and any
        other step the decisions still ask for) is performed, and the call is recorded as failed."""
        value: Any = called
        try:
            while True:
                value = self._sync_step(steps.send(value), calls)
        except StopIteration as stop:
            self._recordabandoned(stop.value, started, context)
        except _Failed as failed:
            self._recordabandoned(failed.result, started, context)

    async def _aabandon(
        self, steps: Generator[object, Any, CascadeResult], called: Called, calls: Sequence[AsyncStageCall],
        started: float, context: CallContext,
    ) -> None:  # fmt: skip
        """:meth:`_abandon` on the event loop."""
        value: Any = called
        try:
            while True:
                value = await self._async_step(steps.send(value), calls)
        except StopIteration as stop:
            await self._arecord(self._stamp(stop.value, started, context), failed=True)
        except _Failed as failed:
            await self._arecord(self._stamp(failed.result, started, context), failed=True)

    def _recordabandoned(self, result: CascadeResult, started: float, context: CallContext) -> None:
        self.tracker.record_failure(self._stamp(result, started, context))

    def _sync_step(self, step: object, calls: Sequence[StageCall]) -> Any:
        if isinstance(step, ScoreRequest):
            return self.scorer.score(step)
        if isinstance(step, _Route):
            return self._route(step.query)
        if isinstance(step, _RateToolCall):
            return step.scorer.score(step.request)
        if isinstance(step, _Call):
            started = time.perf_counter()
            try:
                output = calls[step.stage]()
            except Exception as exc:
                return Called(None, exc, elapsed_ms(started))
            return Called(output, None, elapsed_ms(started))
        return self._hook_step(step, asynchronous=False)

    async def _async_step(self, step: object, calls: Sequence[AsyncStageCall]) -> Any:
        if isinstance(step, _Route):
            return await asyncio.to_thread(self._route, step.query)
        if isinstance(step, ScoreRequest):
            if isinstance(self.scorer, AsyncScorer):
                return await self.scorer.ascore(step)
            return self.scorer.score(step)
        if isinstance(step, _RateToolCall):
            if isinstance(step.scorer, AsyncScorer):
                return await step.scorer.ascore(step.request)
            return step.scorer.score(step.request)
        if isinstance(step, _Call):
            started = time.perf_counter()
            try:
                output = await calls[step.stage]()
            except Exception as exc:
                return Called(None, exc, elapsed_ms(started))
            return Called(output, None, elapsed_ms(started))
        pending = self._hook_step(step, asynchronous=True)
        return await pending if isinstance(pending, Awaitable) else pending

    def _route(self, query: str) -> list[float | None]:
        """The router's prediction per stage; a router that fails routes nothing past (every stage is called)."""
        assert self.router is not None
        try:
            values = list(self.router(query))
        except Exception as exc:  # the router is an optimisation: never let it fail a call
            log.warning("the router failed (%s: %s); no stage is skipped", type(exc).__name__, exc)
            return [None] * len(self.models)
        return [None if v is None else float(v) for v in values]

    def _hook_step(self, step: object, *, asynchronous: bool) -> Any:
        """Cache and budget steps; on the event loop, a hook's async twin
        (:class:`~shared_scorer.protocols.AsyncBudgetHook`, :class:`~shared_scorer.protocols.AsyncAnswerCacheHook`)
        is used when it implements one."""
        budget: Any = self.budget
        cache: Any = self.answer_cache
        async_budget = asynchronous and isinstance(budget, AsyncBudgetHook)
        async_cache = asynchronous and isinstance(cache, AsyncAnswerCacheHook)
        if isinstance(step, _Reserve):
            assert budget is not None
            try:
                reserve_fn = budget.areserve if async_budget else budget.reserve
                reserve = reserve_fn(step.context, step.model, step.amount)
            except BudgetExceeded as exc:
                return exc
            except ConfigurationError:
                raise
            except Exception as exc:
                return _HookFailed(exc)
            if asynchronous and isinstance(reserve, Awaitable):
                return _catch_budget(reserve)
            return reserve
        if isinstance(step, _Settle):
            assert budget is not None
            try:
                settle = (budget.asettle if async_budget else budget.settle)(step.reservation, step.actual)
            except Exception as exc:
                return _settle_failed(step, exc)
            if asynchronous and isinstance(settle, Awaitable):
                return _catch_settle(settle, step)
            return settle
        if isinstance(step, _Lookup):
            assert cache is not None
            return _tolerant(cache.alookup if async_cache else cache.lookup, "lookup", step.query, step.context)
        if isinstance(step, _Store):
            assert cache is not None
            store = cache.astore if async_cache else cache.store
            return _tolerant(
                store, "store", step.query, step.answer, step.context,
                model=step.model, score=step.score, cost_usd=step.cost_usd,
            )  # fmt: skip
        raise AssertionError(f"unknown cascade step {step!r}")  # pragma: no cover

    def _finish(self, result: CascadeResult, started: float, context: CallContext) -> CascadeResult:
        self.tracker.record(self._stamp(result, started, context))
        return result

    def _fail(self, failed: _Failed, started: float, context: CallContext) -> FrugalError:
        """The error to raise (``raise error from error.__cause__``), with the call's result attached."""
        error = self._error(failed, started, context)
        self.tracker.record_failure(failed.result)
        return error

    @staticmethod
    def _stamp(result: CascadeResult, started: float, context: CallContext) -> CascadeResult:
        result.latency_ms = elapsed_ms(started)
        result.context = context
        return result

    def _error(self, failed: _Failed, started: float, context: CallContext) -> FrugalError:
        self._stamp(failed.result, started, context)
        error: FrugalError = failed.error or CascadeError(failed.result.failures)
        error.result = failed.result  # type: ignore[attr-defined]
        return error

    async def _arecord(self, result: CascadeResult, *, failed: bool) -> None:
        """Record on the event loop: a tracker that writes to a database (``AsyncCostRecorder``) is awaited,
        so no SQLite or Redis write blocks the loop."""
        if isinstance(self.tracker, AsyncCostRecorder):
            await (self.tracker.arecord_failure(result) if failed else self.tracker.arecord(result))
        elif failed:
            self.tracker.record_failure(result)
        else:
            self.tracker.record(result)

    def _check_calls(self, calls: Sequence[object]) -> None:
        if len(calls) != len(self.models):
            raise ConfigurationError(f"expected {len(self.models)} stage calls, got {len(calls)}")


async def _catch_budget(pending: Awaitable[Reservation]) -> Reservation | BudgetExceeded | _HookFailed:
    try:
        return await pending
    except BudgetExceeded as exc:
        return exc
    except ConfigurationError:
        raise
    except Exception as exc:
        return _HookFailed(exc)


async def _catch_settle(pending: Awaitable[None], step: _Settle) -> _HookFailed | None:
    try:
        await pending
    except Exception as exc:
        return _settle_failed(step, exc)
    return None


def _settle_failed(step: _Settle, exc: Exception) -> _HookFailed:
    """The provider was paid and its answer is in hand: keep it, and say loudly what the ledger lacks."""
    log.error(
        "could not settle budget reservation %s (model %s, held %s USD) to its real cost of %s USD: %s: %s; "
        "the answer is kept and the cost recorded by the tracker, the ledger holds the reservation until it expires",
        step.reservation.id, step.reservation.model, usd(step.reservation.amount), usd(step.actual),
        type(exc).__name__, exc,
    )  # fmt: skip
    return _HookFailed(exc)


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


def _tokens(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _logprob(value: object) -> float | None:
    """An adapter's log-probability as a finite float <= 0; anything else is taken as not given."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value > 0:
        return None
    return float(value)


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


def _no_limit(stage: int, model: str) -> str:
    return (
        f"stage {stage} ({model}) has no known maximum of output tokens, so a budget cannot reserve its worst "
        f"case; give it with max_output_tokens={{{model!r}: N}} or set max_tokens on the stage"
    )


Router = Callable[[str], Sequence["float | None"]]
"""``router(query)``: per stage, the predicted probability that it answers correctly (``None``: unknown)."""


def _check_gates(
    gates: Sequence[float | None] | None, router: Router | None, models: Sequence[str]
) -> tuple[list[float | None], Router | None]:
    if gates is None:
        return [None] * len(models), router
    values = list(gates)
    if len(values) != len(models):
        raise ConfigurationError(f"{len(models)} stages need {len(models)} gates (None: no gate), got {len(values)}")
    for i, g in enumerate(values):
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float) or not 0.0 <= g <= 1.0):
            raise ConfigurationError(f"gates[{i}] ({models[i]}) must be a probability in [0, 1] or None, got {g!r}")
    if any(g is not None for g in values) and router is None:
        raise ConfigurationError("gated stages need a router (e.g. the strategy scorer's query prior)")
    return [None if g is None else float(g) for g in values], router


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
