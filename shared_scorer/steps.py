"""How the cascade judges each kind of step an agent takes: a tool call, or a final answer.

An agent's model answers in two kinds of step. A **tool-call step** (a reply with at least one tool call,
with or without text) asks for an action; a **final answer** (text, no tool call) answers the user. A
scorer trained on question answering has nothing to say about ``get_weather({"city": "Paris"})``, so the
two are judged apart:

- **Tool-call steps**, by :attr:`StepPolicy.tool_calls`:

  - ``"validate"`` (the default): accepted when the call's validator passes, i.e. every call names a tool
    the call offered and its arguments fit that tool's JSON schema (both adapters pass a
    :class:`~shared_scorer.tools.ToolCallValidator` built from the offered tools); no score is asked for
    and the trail's ``score`` is ``None``. A call that fails validation escalates. With no validator (the
    core called directly with no tools), a tool call cannot be checked and escalates too.
  - ``"score"``: rated by the cascade's scorer, like an answer, against its stage threshold. What the
    scorer reads as the answer is the reply's text, if any, then each call as ``name({"arg": ...})``, one a
    line.
  - a :class:`~shared_scorer.scoring.base.Scorer` (or a function ``(query, answer) -> [0, 1]``): rated by
    that scorer, e.g. one fitted on tool-call outcomes, against the stage threshold.

  Under every policy a call that fails validation escalates first, and a tool-call step is never cached.
  Structured output through function calling is a tool-call step too: under ``"validate"`` a reply that
  fits the schema is accepted on that alone; choose ``"score"`` to have it rated.

- **Final answers** are rated by the cascade's scorer, with the conversation in view. Its
  :class:`~shared_scorer.scoring.base.ScoreRequest` carries as ``query`` the last user message
  (LangChain: the last ``HumanMessage``; LlamaIndex: the last ``user`` message; else the last message),
  and beside it what :func:`~shared_scorer.context.split_conversation` takes from the rest of the
  conversation: ``system`` (the system prompt), ``history`` (earlier turns, the agent's own tool calls
  among them, as ``"role: text"``) and ``tool_results`` (the outputs of the tools run after the question),
  plus the caller's ``profile``. In an agent loop the answer written after a tool ran is so rated against
  the user's question and the tool's output. A scorer fitted without context reads only query and answer.

>>> policy = StepPolicy()
>>> policy.tool_calls, policy.tool_call_scorer is None
('validate', True)
>>> as_step_policy("score").tool_calls
'score'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shared_scorer.errors import ConfigurationError
from shared_scorer.outcome import StageOutput, tool_text
from shared_scorer.scoring.base import Scorer, as_scorer

__all__ = ["StepKind", "StepPolicy", "ToolCallRule", "as_step_policy", "step_answer", "step_kind"]

ToolCallRule = Literal["validate", "score"]
StepKind = Literal["tool_call", "answer"]
_RULES = ("validate", "score")


@dataclass(frozen=True)
class StepPolicy:
    """How each kind of step is judged (see the module docstring).

    ``tool_calls`` is ``"validate"`` (the default), ``"score"`` or a scorer (a :class:`Scorer` or a
    function ``(query, answer) -> [0, 1]``, wrapped as a :class:`~shared_scorer.scoring.base.FunctionScorer`).

    >>> StepPolicy(tool_calls="validate") == StepPolicy()
    True
    """

    tool_calls: ToolCallRule | Scorer | Callable[..., float] = "validate"

    def __post_init__(self) -> None:
        rule = self.tool_calls
        if isinstance(rule, str):
            if rule not in _RULES:
                raise ConfigurationError(_bad_rule(rule))
            return
        if not (isinstance(rule, Scorer) or callable(rule)):
            raise ConfigurationError(_bad_rule(rule))
        object.__setattr__(self, "tool_calls", as_scorer(rule))

    @property
    def validates_tool_calls(self) -> bool:
        """Whether a tool-call step is accepted on validation alone (no score)."""
        return self.tool_calls == "validate"

    @property
    def tool_call_scorer(self) -> Scorer | None:
        """The scorer that rates tool-call steps when it is not the cascade's own (else ``None``)."""
        rule = self.tool_calls
        return rule if isinstance(rule, Scorer) else None  # a function was wrapped as a Scorer at construction

    def unchecked(self, output: StageOutput, has_validator: bool) -> str | None:
        """Why a tool-call step cannot be accepted on validation: there was no validator to pass."""
        if has_validator or not self.validates_tool_calls or not output.tool_calls:
            return None
        return (
            f"tool call {output.tool_calls[0].name!r} cannot be checked: no tools were offered (no validator); "
            "a tool-call step is accepted only when every call names an offered tool and fits its schema"
        )


def as_step_policy(value: object) -> StepPolicy:
    """``value`` as a :class:`StepPolicy`: a policy, ``None`` (the default), ``"validate"``, ``"score"``, or a
    scorer for tool-call steps."""
    if isinstance(value, StepPolicy):
        return value
    if value is None:
        return StepPolicy()
    return StepPolicy(tool_calls=value)  # type: ignore[arg-type]


def step_kind(output: StageOutput) -> StepKind:
    """``"tool_call"`` for a reply with any tool call (text or not), else ``"answer"``."""
    return "tool_call" if output.tool_calls else "answer"


def step_answer(output: StageOutput) -> str:
    """What a scorer reads as the answer: the text, then each tool call as ``name({"arg": ...})``."""
    return "\n".join(part for part in (output.text, tool_text(output)) if part)


def _bad_rule(value: object) -> str:
    return f"tool_calls must be 'validate', 'score' or a scorer, got {value!r}"
