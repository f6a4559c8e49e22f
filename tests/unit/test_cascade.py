"""The core cascade loop: decisions, trail, costs, failures — with plain functions as stages."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from shared_scorer import (
    Cascade,
    CascadeError,
    ConfigurationError,
    ScorerError,
    StageOutput,
    UnknownPriceError,
)
from shared_scorer.outcome import ToolCall
from shared_scorer.scoring.base import ScoreRequest

PRICES = {"small": (1, 2), "mid": (3, 6), "big": (10, 20)}


def answer(text: str, tokens_in: int = 100, tokens_out: int = 10) -> StageOutput:
    return StageOutput(text, tokens_in, tokens_out)


def fail(exc: Exception):
    def call() -> StageOutput:
        raise exc

    return call


def scores_by_answer(table: dict[str, float]):
    return lambda query, text: table[text]


def make(scores: dict[str, float], thresholds=(0.7, 0.6), policy="last") -> Cascade:
    return Cascade(["small", "mid", "big"], thresholds, scores_by_answer(scores), prices=PRICES, return_policy=policy)


def test_first_stage_accepted_costs_only_first_stage():
    cascade = make({"a": 0.9})
    result = cascade.run("q", [lambda: answer("a"), fail(AssertionError("not called")), fail(AssertionError())])
    assert result.output is not None and result.output.text == "a"
    assert result.answer_stage == 0
    assert [a.status for a in result.attempts] == ["accepted", "not_called", "not_called"]
    # 100 * 1 / 1e6 + 10 * 2 / 1e6
    assert result.cost_usd == Decimal("0.00012")
    assert result.escalations == 0
    # all-to-last estimate: first stage's input tokens and the answer's output tokens at big's price
    assert result.all_last_estimate_usd == Decimal("0.0012")


def test_threshold_is_inclusive_and_rejected_stages_are_paid():
    cascade = make({"a": 0.69, "b": 0.6, "c": 0.1})
    result = cascade.run("q", [lambda: answer("a"), lambda: answer("b", 200, 20), lambda: answer("c")])
    assert result.answer_stage == 1
    assert [a.status for a in result.attempts] == ["rejected", "accepted", "not_called"]
    assert [a.score for a in result.attempts] == [0.69, 0.6, None]
    assert result.cost_usd == Decimal("0.00012") + Decimal("0.00072")
    assert result.escalations == 1


def test_last_stage_returned_unscored_by_default():
    cascade = make({"a": 0.1, "b": 0.1})
    result = cascade.run("q", [lambda: answer("a"), lambda: answer("b"), lambda: answer("c", 1000, 100)])
    assert result.answer_stage == 2 and result.output.text == "c"
    assert result.attempts[2].score is None and result.attempts[2].threshold is None
    assert result.cost_usd == Decimal("0.00012") + Decimal("0.00036") + Decimal("0.012")
    assert result.all_last_estimate_usd == Decimal("0.012")
    assert result.fallback is False


def test_best_policy_returns_best_scored_answer():
    cascade = make({"a": 0.5, "b": 0.2, "c": 0.3}, policy="best")
    result = cascade.run("q", [lambda: answer("a"), lambda: answer("b"), lambda: answer("c")])
    assert result.answer_stage == 0 and result.output.text == "a"
    assert [a.status for a in result.attempts] == ["accepted", "rejected", "rejected"]
    assert result.attempts[2].score == 0.3
    assert result.fallback is False


def test_provider_errors_escalate_and_are_recorded():
    cascade = make({"c": 0.0})
    result = cascade.run(
        "q", [fail(TimeoutError("took too long")), fail(RuntimeError("HTTP 500")), lambda: answer("c")]
    )
    assert result.answer_stage == 2
    assert [a.status for a in result.attempts] == ["error", "error", "accepted"]
    assert result.attempts[0].error == "TimeoutError: took too long"
    assert result.attempts[1].error == "RuntimeError: HTTP 500"
    assert result.cost_usd == Decimal("0.0012")


def test_failed_last_stage_falls_back_to_best_earlier_answer():
    cascade = make({"a": 0.3, "b": 0.5})
    result = cascade.run("q", [lambda: answer("a"), lambda: answer("b"), fail(ConnectionError("refused"))])
    assert result.answer_stage == 1 and result.fallback is True
    assert [a.status for a in result.attempts] == ["rejected", "accepted", "error"]


def test_every_stage_failing_raises_one_error_with_each_cause():
    cascade = make({})
    with pytest.raises(CascadeError) as info:
        cascade.run("q", [fail(TimeoutError("t")), lambda: answer("   "), fail(ValueError("bad json"))])
    error = info.value
    assert [(f.stage, f.model, f.kind) for f in error.failures] == [
        (0, "small", "error"),
        (1, "mid", "invalid"),
        (2, "big", "error"),
    ]
    assert "stage 1 (mid): invalid: empty answer" in str(error)
    # the empty answer was still billed
    assert cascade.tracker.summary(decimals=True)["total_cost_usd"] == Decimal("0.00036")
    assert cascade.tracker.summary()["failed_calls"] == 1


def test_validator_rejection_escalates_without_scoring():
    seen: list[str] = []

    def scorer(query: str, text: str) -> float:
        seen.append(text)
        return 1.0

    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES)
    result = cascade.run(
        "q",
        [lambda: answer("not json"), lambda: answer('{"ok": 1}')],
        validate=lambda out: None if out.text.startswith("{") else "output is not JSON",
    )
    assert result.answer_stage == 1
    assert result.attempts[0].status == "invalid" and result.attempts[0].error == "output is not JSON"
    assert seen == []


def test_adapter_problems_make_output_invalid():
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 1.0, prices=PRICES)
    bad = StageOutput("", 5, 5, tool_calls=(ToolCall("f", {}),), problems=("arguments do not parse",))
    result = cascade.run("q", [lambda: bad, lambda: answer("ok")])
    assert result.attempts[0].status == "invalid"
    assert result.attempts[0].error == "arguments do not parse"
    assert result.attempts[0].cost_usd == Decimal("0.000015")


def test_scorer_sees_model_stage_and_previous_answers():
    requests: list[ScoreRequest] = []

    def scorer(request: ScoreRequest) -> float:
        requests.append(request)
        return 0.0

    cascade = Cascade(["small", "mid", "big"], [0.5, 0.5], scorer, prices=PRICES, return_policy="best")
    cascade.run("the question", [lambda: answer("a"), lambda: answer("b"), lambda: answer("c")])
    assert [(r.model, r.stage, r.previous_answers) for r in requests] == [
        ("small", 0, ()),
        ("mid", 1, ("a",)),
        ("big", 2, ("a", "b")),
    ]
    assert {r.query for r in requests} == {"the question"}


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "high", None])
def test_scorer_returning_non_probability_is_an_error(bad):
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: bad, prices=PRICES)
    with pytest.raises(ScorerError, match="stage 0 \\(small\\)"):
        cascade.run("q", [lambda: answer("a"), lambda: answer("b")])


def test_missing_usage_costs_zero_and_is_flagged():
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES)
    result = cascade.run("q", [lambda: StageOutput("a")])
    assert result.attempts[0].usage_reported is False
    assert result.cost_usd == Decimal(0)
    assert cascade.tracker.summary()["stage_calls_without_usage"] == 1


def test_async_run_makes_the_same_decisions():
    cascade = make({"a": 0.3, "b": 0.65})

    async def a():
        return answer("a")

    async def b():
        return answer("b")

    async def c():
        raise AssertionError("must not be called")

    async def scenario():
        return await cascade.arun("q", [a, b, c])

    result = asyncio.run(scenario())
    assert result.answer_stage == 1
    assert result.cost_usd == Decimal("0.00048")


def test_async_uses_scorer_ascore_when_present():
    class AsyncScorer:
        def score(self, request):
            raise AssertionError("sync path used")

        def score_batch(self, requests):
            raise AssertionError("sync path used")

        async def ascore(self, request):
            return 0.99

    cascade = Cascade(["small", "big"], [0.9], AsyncScorer(), prices=PRICES)

    async def a():
        return answer("a")

    result = asyncio.run(cascade.arun("q", [a, a]))
    assert result.attempts[0].score == 0.99 and result.answer_stage == 0


def test_stream_yields_live_chunks_of_last_stage_then_result():
    cascade = make({"a": 0.1, "b": 0.1})

    def live():
        yield "c1"
        yield "c2"
        return answer("c1c2", 10, 2)

    items = list(cascade.stream("q", [lambda: answer("a"), lambda: answer("b"), None], live))
    assert items[:2] == ["c1", "c2"]
    result = items[2]
    assert result.answer_stage == 2 and result.output.text == "c1c2"
    assert result.cost_usd == Decimal("0.00012") + Decimal("0.00036") + Decimal("0.00014")


def test_stream_live_failure_before_first_chunk_falls_back():
    cascade = make({"a": 0.1, "b": 0.4})

    def live():
        raise ConnectionError("down")
        yield  # pragma: no cover

    items = list(cascade.stream("q", [lambda: answer("a"), lambda: answer("b"), None], live))
    assert len(items) == 1 and items[0].answer_stage == 1 and items[0].fallback


def test_stream_live_failure_after_a_chunk_raises():
    cascade = make({"a": 0.1, "b": 0.1})

    def live():
        yield "partial"
        raise ConnectionError("dropped")

    stream = cascade.stream("q", [lambda: answer("a"), lambda: answer("b"), None], live)
    assert next(stream) == "partial"
    with pytest.raises(ConnectionError):
        next(stream)


def test_a_cut_reply_escalates_unless_its_text_was_already_streamed_live():
    from dataclasses import replace

    cascade = make({"a": 0.1, "b": 0.4})
    cut = replace(answer("partial", 10, 2), truncated=True)
    # buffered: a reply cut at its output limit is not an answer, even with a high score
    high = make({"partial": 0.99, "b": 0.4})
    result = high.run("q", [lambda: cut, lambda: answer("b"), lambda: answer("c")])
    assert result.attempts[0].status == "invalid" and "output-token limit" in result.attempts[0].error
    assert result.answer_stage == 2

    def live():
        yield "partial"
        return cut

    items = list(cascade.stream("q", [lambda: answer("a"), lambda: answer("b"), None], live))
    assert items[0] == "partial" and items[-1].answer_stage == 2 and not items[-1].fallback

    def live_empty():
        yield ""
        return replace(answer("", 10, 2), truncated=True)

    items = list(cascade.stream("q", [lambda: answer("a"), lambda: answer("b"), None], live_empty))
    assert items[-1].answer_stage == 1 and items[-1].fallback


def test_tracker_totals_by_model_and_stage():
    cascade = make({"a": 0.9, "x": 0.1, "b": 0.9})
    cascade.run("q1", [lambda: answer("a"), None, None])
    cascade.run("q2", [lambda: answer("x"), lambda: answer("b"), None])
    summary = cascade.tracker.summary(decimals=True)
    assert summary["calls"] == 2 and summary["escalations"] == 1
    assert summary["total_cost_usd"] == Decimal("0.00012") * 2 + Decimal("0.00036")
    assert summary["by_model"]["small"]["calls"] == 2
    assert summary["by_stage"][1] == {
        "calls": 1,
        "cost_usd": Decimal("0.00036"),
        "input_tokens": 100,
        "output_tokens": 10,
    }
    assert summary["answered_by_stage"] == {0: 1, 1: 1}
    assert summary["estimated_cost_if_last_stage_only_usd"] == Decimal("0.0012") * 2


def test_tracker_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    cascade = make({"a": 0.9})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: cascade.run("q", [lambda: answer("a"), None, None]), range(400)))
    summary = cascade.tracker.summary(decimals=True)
    assert summary["calls"] == 400
    assert summary["total_cost_usd"] == Decimal("0.00012") * 400


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": []}, "at least one stage"),
        ({"thresholds": [0.5]}, "3 stages need 2 threshold"),
        ({"thresholds": [0.5, 1.2]}, "threshold 1 must be in \\[0, 1\\]"),
        ({"thresholds": [0.5, float("nan")]}, "threshold 1 must be a number"),
        ({"return_policy": "cheapest"}, "return_policy"),
        ({"scorer": 42}, "scorer must"),
    ],
)
def test_bad_construction_fails_at_once(kwargs, message):
    args = {"models": ["small", "mid", "big"], "thresholds": [0.5, 0.5], "scorer": lambda q, a: 1.0}
    args.update(kwargs)
    with pytest.raises(ConfigurationError, match=message):
        Cascade(args.pop("models"), args.pop("thresholds"), args.pop("scorer"), prices=PRICES, **args)


def test_unknown_price_is_an_error_naming_the_model():
    with pytest.raises(UnknownPriceError, match="no known price for model 'my-private-model'"):
        Cascade(["my-private-model"], [], lambda q, a: 1.0)


def test_catalog_price_from_genai_prices():
    cascade = Cascade(["gpt-4o-mini"], [], lambda q, a: 1.0)
    result = cascade.run("q", [lambda: answer("a", 1_000_000, 1_000_000)])
    # genai-prices lists gpt-4o-mini at $0.15 / $0.60 per million tokens
    assert result.cost_usd == Decimal("0.75")
