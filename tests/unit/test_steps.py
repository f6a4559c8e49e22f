"""Agent steps are judged as agent steps: a tool-call step is validated (or scored by a tool-call scorer),
a final answer is scored. Exact trails and costs, over plain functions as stages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from shared_scorer import Cascade, CascadeError, ConfigurationError, StageOutput, ToolCall
from shared_scorer.scoring.base import ScoreRequest
from shared_scorer.tools import ToolCallValidator, ToolSpec

PRICES = {"small": (1, 2), "big": (10, 20)}
QUERY = "What is the weather in Paris?"
WEATHER = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CHECK = ToolCallValidator([WEATHER])
SMALL_COST = Decimal("0.00012")  # 100 input tokens at $1/M + 10 output tokens at $2/M
BIG_COST = Decimal("0.0012")  # the same tokens at $10/M and $20/M


def step(name: str = "get_weather", arguments: dict[str, Any] | None = None, text: str = "") -> StageOutput:
    """A tool-call step of 100 input and 10 output tokens."""
    call = ToolCall(name, {"city": "Paris"} if arguments is None else arguments, "call-1")
    return StageOutput(text, 100, 10, tool_calls=(call,))


def answer(text: str) -> StageOutput:
    return StageOutput(text, 100, 10)


def never() -> StageOutput:
    raise AssertionError("this stage must not be called")


class Spy:
    """A scorer that records every request and rates by answer text (0.1 for anything it does not know)."""

    def __init__(self, table: dict[str, float] | None = None) -> None:
        self.table = table or {}
        self.requests: list[ScoreRequest] = []

    def score(self, request: ScoreRequest) -> float:
        self.requests.append(request)
        return self.table.get(request.answer, 0.1)

    def score_batch(self, requests: list[ScoreRequest]) -> list[float]:
        return [self.score(r) for r in requests]


class AsyncSpy(Spy):
    """A scorer with an async twin: the async drivers must await ``ascore``."""

    def __init__(self, table: dict[str, float] | None = None) -> None:
        super().__init__(table)
        self.awaited = 0

    async def ascore(self, request: ScoreRequest) -> float:
        self.awaited += 1
        return self.score(request)


def drive(cascade: Cascade, how: str, calls: list[Callable[[], StageOutput]], validate: Any = CHECK) -> Any:
    """Run one call through the driver ``how`` (run, arun or stream); return the CascadeResult."""
    if how == "run":
        return cascade.run(QUERY, calls, validate)
    if how == "arun":

        def wrap(call: Callable[[], StageOutput]) -> Any:
            async def acall() -> StageOutput:
                return call()

            return acall

        return asyncio.run(cascade.arun(QUERY, [wrap(c) for c in calls], validate))
    last = calls[-1]

    def live() -> Any:
        output = last()
        yield output.text
        return output

    return list(cascade.stream(QUERY, calls, live, validate))[-1]


def trail(result: Any) -> list[tuple[str, str, float | None]]:
    return [(a.model, a.status, a.score) for a in result.attempts]


# ------------------------------------------------------------------ the default: tool calls are validated


@pytest.mark.parametrize("how", ["run", "arun", "stream"])
def test_a_valid_tool_call_is_accepted_on_validation_without_a_score(how):
    scorer = Spy()  # would reject anything: 0.1 < 0.5
    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES)
    result = drive(cascade, how, [step, never])
    assert result.answer_stage == 0 and result.output.tool_calls[0].arguments == {"city": "Paris"}
    assert trail(result) == [("small", "accepted", None), ("big", "not_called", None)]
    assert result.cost_usd == SMALL_COST and result.escalations == 0
    assert scorer.requests == []  # a tool call never reaches the answer scorer


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (step("get_forecast"), "tool call to unknown tool 'get_forecast' (offered: ['get_weather'])"),
        (step(arguments={"city": 5}), "tool call 'get_weather': arguments do not fit its schema: "
                                      "5 is not of type 'string' (at city)"),
        (step(arguments={}), "tool call 'get_weather': arguments do not fit its schema: "
                             "'city' is a required property (at arguments)"),
    ],
)  # fmt: skip
def test_a_bad_tool_call_escalates_and_the_next_stages_valid_one_is_kept(bad, reason):
    scorer = Spy()
    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES, return_policy="best")
    result = cascade.run(QUERY, [lambda: bad, step], CHECK)
    assert result.answer_stage == 1 and not result.fallback
    assert trail(result) == [("small", "invalid", None), ("big", "accepted", None)]
    assert result.attempts[0].error == reason
    assert result.cost_usd == SMALL_COST + BIG_COST == Decimal("0.00132")
    assert scorer.requests == []  # under "best" too, a validated tool call is not scored


def test_a_tool_call_with_text_is_a_tool_call_step():
    scorer = Spy({"Let me look that up.": 0.0})
    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES)
    result = cascade.run(QUERY, [lambda: step(text="Let me look that up."), never], CHECK)
    assert trail(result) == [("small", "accepted", None), ("big", "not_called", None)]
    assert scorer.requests == []


def test_a_tool_call_that_nothing_can_check_escalates():
    """Without a validator the cascade cannot know the offered tools: the call is not accepted unchecked."""
    cascade = Cascade(["small", "big"], [0.5], Spy(), prices=PRICES)
    result = cascade.run(QUERY, [step, lambda: answer("Sunny.")])
    assert trail(result) == [("small", "invalid", None), ("big", "accepted", None)]
    assert result.attempts[0].error == (
        "tool call 'get_weather' cannot be checked: no tools were offered (no validator); a tool-call step "
        "is accepted only when every call names an offered tool and fits its schema"
    )
    assert result.cost_usd == SMALL_COST + BIG_COST


def test_final_answers_are_still_scored_against_the_query():
    scorer = Spy({"Sunny, 21 C.": 0.9})
    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES)
    result = cascade.run(QUERY, [lambda: answer("Sunny, 21 C."), never], CHECK)
    assert trail(result) == [("small", "accepted", 0.9), ("big", "not_called", None)]
    assert [(r.query, r.answer, r.model, r.stage) for r in scorer.requests] == [(QUERY, "Sunny, 21 C.", "small", 0)]
    assert result.cost_usd == SMALL_COST


def test_a_low_scored_answer_still_escalates_to_a_valid_tool_call():
    scorer = Spy({"I do not know.": 0.2})
    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES, return_policy="best")
    result = cascade.run(QUERY, [lambda: answer("I do not know."), step], CHECK)
    assert trail(result) == [("small", "rejected", 0.2), ("big", "accepted", None)]
    assert result.answer_stage == 1 and result.cost_usd == SMALL_COST + BIG_COST


# ------------------------------------------------------------------ tool calls scored


def test_score_rates_tool_calls_with_the_stage_scorer():
    from shared_scorer.steps import StepPolicy

    tool_text = 'get_weather({"city": "Paris"})'
    scorer = Spy({tool_text: 0.3})
    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES, step_policy=StepPolicy(tool_calls="score"))
    result = cascade.run(QUERY, [step, lambda: step(arguments={"city": "Paris, FR"})], CHECK)
    assert trail(result) == [("small", "rejected", 0.3), ("big", "accepted", None)]
    assert [(r.query, r.answer) for r in scorer.requests] == [(QUERY, tool_text)]
    assert result.cost_usd == SMALL_COST + BIG_COST
    # the text written with a call is rated with it
    scorer.requests.clear()
    cascade.run(QUERY, [lambda: step(text="Checking."), never], CHECK)
    assert [r.answer for r in scorer.requests] == ["Checking.\n" + tool_text]


@pytest.mark.parametrize("how", ["run", "arun", "stream"])
def test_a_tool_call_scorer_rates_tool_calls_and_the_stage_scorer_rates_answers(how):
    from shared_scorer.steps import StepPolicy

    answers = AsyncSpy({"Sunny.": 0.2})
    tools = AsyncSpy({'get_weather({"city": "Paris"})': 0.8})
    cascade = Cascade(["small", "big"], [0.5], answers, prices=PRICES, step_policy=StepPolicy(tool_calls=tools))
    kept = drive(cascade, how, [step, never])
    assert trail(kept) == [("small", "accepted", 0.8), ("big", "not_called", None)]
    escalated = drive(cascade, how, [lambda: answer("Sunny."), lambda: answer("Sunny, 21 C.")])
    assert trail(escalated) == [("small", "rejected", 0.2), ("big", "accepted", None)]
    assert [r.answer for r in tools.requests] == ['get_weather({"city": "Paris"})']
    assert [r.answer for r in answers.requests] == ["Sunny."]
    assert (tools.awaited, answers.awaited) == ((1, 1) if how == "arun" else (0, 0))
    assert kept.cost_usd == SMALL_COST and escalated.cost_usd == SMALL_COST + BIG_COST


def test_a_tool_call_scorer_may_be_a_function_and_is_checked():
    from shared_scorer.errors import ScorerError
    from shared_scorer.steps import StepPolicy

    policy = StepPolicy(tool_calls=lambda query, call: 0.7 if "Paris" in call else 0.0)
    cascade = Cascade(["small", "big"], [0.5], Spy(), prices=PRICES, step_policy=policy)
    assert trail(cascade.run(QUERY, [step, never], CHECK))[0] == ("small", "accepted", 0.7)
    broken = Cascade(["small", "big"], [0.5], Spy(), prices=PRICES, step_policy=StepPolicy(tool_calls=lambda q, a: 2))
    with pytest.raises(ScorerError, match=r"scorer returned 2.0 for stage 0 \(small\)"):
        broken.run(QUERY, [step, never], CHECK)


def test_invalid_tool_calls_escalate_under_every_policy():
    from shared_scorer.steps import StepPolicy

    for policy in (StepPolicy(tool_calls="score"), StepPolicy(tool_calls=lambda q, a: 1.0)):
        cascade = Cascade(["small", "big"], [0.5], lambda q, a: 1.0, prices=PRICES, step_policy=policy)
        result = cascade.run(QUERY, [lambda: step("get_forecast"), step], CHECK)
        assert trail(result) == [("small", "invalid", None), ("big", "accepted", None)]
        assert result.cost_usd == SMALL_COST + BIG_COST


# ------------------------------------------------------------------ configuration


def test_the_policy_is_validated_and_has_a_plain_default():
    from shared_scorer.steps import StepPolicy, as_step_policy

    assert Cascade(["small"], [], Spy(), prices=PRICES).step_policy == StepPolicy(tool_calls="validate")
    assert as_step_policy("score") == StepPolicy(tool_calls="score")
    assert as_step_policy(None) == StepPolicy()
    with pytest.raises(ConfigurationError, match=r"tool_calls must be 'validate', 'score' or a scorer, got 'scored'"):
        StepPolicy(tool_calls="scored")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"tool_calls must be 'validate', 'score' or a scorer, got 3"):
        Cascade(["small"], [], Spy(), prices=PRICES, step_policy=3)  # type: ignore[arg-type]


def test_a_cascade_whose_every_stage_writes_a_bad_call_fails_naming_each():
    cascade = Cascade(["small", "big"], [0.5], Spy(), prices=PRICES)
    with pytest.raises(CascadeError) as raised:
        cascade.run(QUERY, [lambda: step("nope"), lambda: step(arguments={"city": 1})], CHECK)
    result = raised.value.result  # type: ignore[attr-defined]
    assert trail(result) == [("small", "invalid", None), ("big", "invalid", None)]
    assert result.cost_usd == SMALL_COST + BIG_COST


# ------------------------------------------------------------------ both adapters' one setting


def test_the_adapters_setting_builds_the_policy_and_refuses_a_bad_one():
    from shared_scorer.adapters.settings import CascadeSettings
    from shared_scorer.steps import StepPolicy

    class Names(CascadeSettings):
        _stage_type, _stage_kind = str, "a str"
        _stage_name = staticmethod(str)

    def settings(**options: Any) -> Any:
        return Names(stages=["small", "big"], scorer=Spy(), thresholds=[0.5], prices=PRICES, **options)

    assert settings().tool_call_policy == "validate"
    assert settings().cascade.step_policy == StepPolicy()
    assert settings().model_dump()["tool_call_policy"] == "validate"
    assert settings(tool_call_policy="score").cascade.step_policy == StepPolicy(tool_calls="score")
    tools = Spy()
    assert settings(tool_call_policy=tools).cascade.step_policy.tool_call_scorer is tools
    with pytest.raises(ConfigurationError, match=r"tool_calls must be 'validate', 'score' or a scorer, got 'none'"):
        settings(tool_call_policy="none")
    description = CascadeSettings.model_fields["tool_call_policy"].description or ""
    assert "'validate'`` (default)" in description
