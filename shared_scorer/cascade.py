"""The one escalation loop: call a stage, validate, score, accept or escalate.

The decisions live in :meth:`Cascade._decide`, a generator that *asks* for stage calls and scores and
never performs I/O itself. Three drivers run it: :meth:`Cascade.run` (sync), :meth:`Cascade.arun`
(async) and :meth:`Cascade.stream` / :meth:`Cascade.astream` (the last stage streamed live). So sync,
async and streaming calls cannot disagree on which answer is returned.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from shared_scorer.costs import CostTracker, Price, PriceSpec, resolve_price
from shared_scorer.errors import CascadeError, ConfigurationError, StageFailure
from shared_scorer.scoring.base import Scorer, ScoreRequest, as_scorer, check_score

ReturnPolicy = Literal["last", "best"]
Validator = Callable[["StageOutput"], "str | None"]


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


@dataclass
class Attempt:
    """One stage's part in one cascade call (an entry of the trail)."""

    stage: int
    model: str
    status: Literal["accepted", "rejected", "error", "invalid", "not_called"] = "not_called"
    score: float | None = None
    threshold: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    usage_reported: bool = False
    cost_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def called(self) -> bool:
        """Whether the provider was called (and so may have cost money)."""
        return self.status != "not_called"

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
            "cost_usd": self.cost_usd,
            "latency_ms": round(self.latency_ms, 3),
            "error": self.error,
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
        return None if self.answer_stage is None else self.attempts[self.answer_stage].model

    @property
    def input_tokens(self) -> int:
        return sum(a.input_tokens for a in self.attempts)

    @property
    def output_tokens(self) -> int:
        return sum(a.output_tokens for a in self.attempts)

    def trail(self) -> dict[str, Any]:
        """The JSON-friendly record adapters attach to responses (``Decimal`` costs)."""
        return {
            "model": self.model,
            "stage": self.answer_stage,
            "fallback": self.fallback,
            "cost_usd": self.cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": round(self.latency_ms, 3),
            "escalations": self.escalations,
            "stages": [a.as_dict() for a in self.attempts],
        }


@dataclass
class _Call:
    stage: int


@dataclass
class _Called:
    output: StageOutput | None
    error: BaseException | None
    latency_ms: float


StageCall = Callable[[], StageOutput]
AsyncStageCall = Callable[[], Awaitable[StageOutput]]
LiveStream = Callable[[], Generator[Any, None, StageOutput]]
AsyncLiveStream = Callable[[Callable[[StageOutput], None]], AsyncIterator[Any]]


class Cascade:
    """An ordered list of models (cheapest first), a scorer and one threshold per stage but the last.

    The cascade itself calls nothing: adapters pass one call per stage to :meth:`run` / :meth:`arun`.

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
    ) -> None:
        self.models = list(models)
        if not self.models:
            raise ConfigurationError("a cascade needs at least one stage")
        self.thresholds = check_thresholds(thresholds, len(self.models))
        if return_policy not in ("last", "best"):
            raise ConfigurationError(f"return_policy must be 'last' or 'best', got {return_policy!r}")
        self.return_policy: ReturnPolicy = return_policy
        self.scorer = as_scorer(scorer)
        self.prices: list[Price] = [resolve_price(m, prices) for m in self.models]
        self.tracker = tracker if tracker is not None else CostTracker()

    # ------------------------------------------------------------------ the decisions

    def _decide(self, query: str, validate: Validator | None) -> Generator[object, Any, CascadeResult]:
        """Yield ``_Call`` (answered with ``_Called``) and ``ScoreRequest`` (answered with a float)."""
        n = len(self.models)
        attempts = [Attempt(stage=i, model=m) for i, m in enumerate(self.models)]
        failures: list[StageFailure] = []
        outputs: dict[int, StageOutput] = {}
        answers: list[str] = []
        best: int | None = None
        for i in range(n):
            attempt = attempts[i]
            last = i == n - 1
            attempt.threshold = None if last else self.thresholds[i]
            called: _Called = yield _Call(i)
            attempt.latency_ms = called.latency_ms
            if called.error is not None or called.output is None:
                attempt.status = "error"
                attempt.error = f"{type(called.error).__name__}: {called.error}"
                failures.append(StageFailure(i, attempt.model, "error", attempt.error))
                continue
            output = called.output
            self._price(attempt, output)
            reason = _check_output(output) or (validate(output) if validate else None)
            if reason is not None:
                attempt.status = "invalid"
                attempt.error = reason
                failures.append(StageFailure(i, attempt.model, "invalid", reason))
                continue
            outputs[i] = output
            if not last or self.return_policy == "best":
                request = ScoreRequest(
                    query, output.text or _tool_text(output), attempt.model, i, tuple(answers)
                )
                attempt.score = check_score((yield request), request)
                if best is None or attempt.score > (attempts[best].score or 0.0):
                    best = i
            answers.append(output.text)
            if last and self.return_policy == "last":
                attempt.status = "accepted"
                return self._result(attempts, i, outputs, failures, fallback=False)
            if not last and attempt.score is not None and attempt.score >= self.thresholds[i]:
                attempt.status = "accepted"
                return self._result(attempts, i, outputs, failures, fallback=False)
            attempt.status = "rejected"
        if best is None:
            result = self._result(attempts, None, outputs, failures, fallback=False)
            raise _Failed(result)
        # Under "best" this is the normal end; under "last" only a failed last stage gets here.
        attempts[best].status = "accepted"
        fallback = attempts[n - 1].status in ("error", "invalid")
        return self._result(attempts, best, outputs, failures, fallback=fallback)

    def _price(self, attempt: Attempt, output: StageOutput) -> None:
        attempt.usage_reported = output.input_tokens is not None and output.output_tokens is not None
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
                result.all_last_estimate_usd = self.prices[last].cost(
                    first.input_tokens, attempts[stage].output_tokens
                )
        return result

    # ------------------------------------------------------------------ drivers

    def run(self, query: str, calls: Sequence[StageCall], validate: Validator | None = None) -> CascadeResult:
        """Run the cascade synchronously; ``calls[i]()`` calls stage ``i``'s provider."""
        self._check_calls(calls)
        steps = self._decide(query, validate)
        return self._drive(steps, lambda step: self._sync_step(step, calls))

    async def arun(
        self, query: str, calls: Sequence[AsyncStageCall], validate: Validator | None = None
    ) -> CascadeResult:
        """Run the cascade on the event loop; ``await calls[i]()`` calls stage ``i``."""
        self._check_calls(calls)
        started = time.perf_counter()
        steps = self._decide(query, validate)
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                value = await self._async_step(step, calls)
        except StopIteration as stop:
            return self._finish(stop.value, started)
        except _Failed as failed:
            raise self._fail(failed.result, started) from None

    def stream(
        self,
        query: str,
        calls: Sequence[StageCall],
        live_last: LiveStream | None,
        validate: Validator | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`run`, but the last stage (under ``return_policy="last"``) streams live.

        Earlier stages are buffered until scored. ``live_last()`` is a generator that yields the
        adapter's chunks and returns the assembled :class:`StageOutput`; its chunks are yielded here as
        they come. The final item is the :class:`CascadeResult`. A live stream that fails before its
        first chunk escalates like any error; one that fails mid-stream raises (its chunks are out).
        """
        self._check_calls(calls)
        started = time.perf_counter()
        steps = self._decide(query, validate)
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                if isinstance(step, _Call) and live_last is not None and self._streams_live(step.stage):
                    value = yield from _live(live_last)
                else:
                    value = self._sync_step(step, calls)
        except StopIteration as stop:
            yield self._finish(stop.value, started)
        except _Failed as failed:
            raise self._fail(failed.result, started) from None

    async def astream(
        self,
        query: str,
        calls: Sequence[AsyncStageCall],
        live_last: AsyncLiveStream | None,
        validate: Validator | None = None,
    ) -> AsyncIterator[Any]:
        """The async twin of :meth:`stream`; ``live_last(done)`` yields chunks and calls ``done(output)``."""
        self._check_calls(calls)
        started = time.perf_counter()
        steps = self._decide(query, validate)
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
            yield self._finish(stop.value, started)
        except _Failed as failed:
            raise self._fail(failed.result, started) from None

    def _streams_live(self, stage: int) -> bool:
        return stage == len(self.models) - 1 and self.return_policy == "last"

    def _drive(
        self, steps: Generator[object, Any, CascadeResult], do: Callable[[object], Any]
    ) -> CascadeResult:
        started = time.perf_counter()
        value: Any = None
        try:
            while True:
                value = do(steps.send(value))
        except StopIteration as stop:
            return self._finish(stop.value, started)
        except _Failed as failed:
            raise self._fail(failed.result, started) from None

    def _sync_step(self, step: object, calls: Sequence[StageCall]) -> Any:
        if isinstance(step, ScoreRequest):
            return self.scorer.score(step)
        assert isinstance(step, _Call)
        started = time.perf_counter()
        try:
            output = calls[step.stage]()
        except Exception as exc:
            return _Called(None, exc, _ms(started))
        return _Called(output, None, _ms(started))

    async def _async_step(self, step: object, calls: Sequence[AsyncStageCall]) -> Any:
        if isinstance(step, ScoreRequest):
            ascore = getattr(self.scorer, "ascore", None)
            return await ascore(step) if ascore is not None else self.scorer.score(step)
        assert isinstance(step, _Call)
        started = time.perf_counter()
        try:
            output = await calls[step.stage]()
        except Exception as exc:
            return _Called(None, exc, _ms(started))
        return _Called(output, None, _ms(started))

    def _finish(self, result: CascadeResult, started: float) -> CascadeResult:
        result.latency_ms = _ms(started)
        self.tracker.record(result)
        return result

    def _fail(self, result: CascadeResult, started: float) -> CascadeError:
        result.latency_ms = _ms(started)
        self.tracker.record_failure(result)
        error = CascadeError(result.failures)
        error.result = result  # type: ignore[attr-defined]
        return error

    def _check_calls(self, calls: Sequence[object]) -> None:
        if len(calls) != len(self.models):
            raise ConfigurationError(f"expected {len(self.models)} stage calls, got {len(calls)}")


class _Failed(Exception):
    def __init__(self, result: CascadeResult) -> None:
        self.result = result


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
        return _Called(stop.value, None, _ms(started))
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
        box.append(_Called(done[0], None, _ms(started)))


def _check_output(output: StageOutput) -> str | None:
    if not isinstance(output, StageOutput):
        return f"stage returned {type(output).__name__}, expected StageOutput"
    if output.problems:
        return "; ".join(output.problems)
    if not output.text.strip() and not output.tool_calls:
        return "empty answer: no text and no tool calls"
    return None


def _tool_text(output: StageOutput) -> str:
    import json

    return "\n".join(
        f"{call.name}({json.dumps(dict(call.arguments), sort_keys=True)})" for call in output.tool_calls
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


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
