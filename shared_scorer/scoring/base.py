"""The scorer protocol: rate how likely an answer to a query is correct, in [0, 1]."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shared_scorer.errors import ConfigurationError, ScorerError


@dataclass(frozen=True)
class ScoreRequest:
    """One (query, answer) pair to rate.

    ``model`` is the name of the model that wrote the answer; ``stage`` its position in the cascade;
    ``previous_answers`` the answers earlier stages gave to the same query (oldest first);
    ``output_tokens`` the output tokens the provider billed for it (reasoning included), if reported;
    ``logprob`` the sum of the answer's token log-probabilities, or None when the provider gave none.

    What the answer depended on besides the query: ``system`` the system prompt; ``history`` the earlier
    turns as ``"role: text"`` (oldest first); ``tool_results`` the tool outputs the answer was built on
    (oldest first); ``profile`` the caller's profile as text (see :func:`shared_scorer.context.render_profile`).
    All empty when the call has none; a scorer fitted without context ignores them.
    """

    query: str
    answer: str
    model: str = ""
    stage: int = 0
    previous_answers: tuple[str, ...] = field(default=())
    output_tokens: int | None = None
    logprob: float | None = None
    system: str = ""
    history: tuple[str, ...] = field(default=())
    tool_results: tuple[str, ...] = field(default=())
    profile: str = ""


@runtime_checkable
class Scorer(Protocol):
    """Anything that rates (query, answer) pairs with a probability of being correct."""

    def score(self, request: ScoreRequest) -> float:
        """Rate one pair."""
        ...

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """Rate many pairs at once (same order as given)."""
        ...


@runtime_checkable
class AsyncScorer(Protocol):
    """A scorer that can score on the event loop (the cascade's async drivers await it when present)."""

    async def ascore(self, request: ScoreRequest) -> float:
        """The score of one answer, awaited."""
        ...


class FunctionScorer:
    """A scorer made from a user's function.

    The function takes ``(query, answer)`` or a single :class:`ScoreRequest` and returns a float in
    [0, 1]. Nothing is guessed: this wraps exactly what the user wrote.

    >>> scorer = FunctionScorer(lambda query, answer: 1.0 if "Eliot" in answer else 0.0)
    >>> scorer.score(ScoreRequest("Who wrote Middlemarch?", "George Eliot"))
    1.0
    """

    def __init__(self, fn: Callable[..., float]) -> None:
        if not callable(fn):
            raise ConfigurationError(f"scorer must be a Scorer or a callable, got {type(fn).__name__}")
        self.fn = fn
        self._takes_request = _count_positional(fn) == 1

    def score(self, request: ScoreRequest) -> float:
        value = self.fn(request) if self._takes_request else self.fn(request.query, request.answer)
        return check_score(value, request)

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return [self.score(r) for r in requests]


def _count_positional(fn: Callable[..., float]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


def check_score(value: object, request: ScoreRequest) -> float:
    """Return ``value`` as a float in [0, 1] or raise :class:`ScorerError` naming the pair."""
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ScorerError(
            f"scorer returned {value!r} for stage {request.stage} ({request.model}); expected a float in [0, 1]"
        ) from None
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise ScorerError(
            f"scorer returned {score!r} for stage {request.stage} ({request.model}); expected a float in [0, 1]"
        )
    return score


def as_scorer(scorer: object) -> Scorer:
    """Accept a :class:`Scorer` or a plain callable; anything else is a configuration error."""
    if isinstance(scorer, Scorer):
        return scorer
    if callable(scorer):
        return FunctionScorer(scorer)
    raise ConfigurationError(
        f"scorer must implement score()/score_batch() or be a callable, got {type(scorer).__name__}"
    )
