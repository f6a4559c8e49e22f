"""How many output tokens a stage may write: what a budget reserves for, found on the stage object.

>>> class Stage:
...     max_tokens = 512
>>> output_limit_of(Stage(), "m")
512
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shared_scorer.context import check_max_tokens

__all__ = ["max_output_tokens_of", "output_limit_of"]

_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def output_limit_of(stage: object, model: str, given: Mapping[str, object] | None = None) -> int | None:
    """The most output tokens ``stage`` (named ``model``) writes per call, from the first source that has
    it: ``given[model]`` (the user's ``max_output_tokens`` mapping); the stage's own ``max_tokens``,
    ``max_completion_tokens`` or ``max_output_tokens`` field; its ``profile["max_output_tokens"]``
    (LangChain model profiles). ``None`` when none does. (The price catalogue, ``genai-prices``,
    publishes context windows but no output limits, so it is not a source.)

    >>> class Stage:
    ...     max_tokens = 512
    >>> output_limit_of(Stage(), "m"), output_limit_of(Stage(), "m", {"m": 64}), output_limit_of(object(), "m")
    (512, 64, None)
    """
    if given and model in given:
        return check_max_tokens(given[model], f"max_output_tokens[{model!r}]")
    for name in _LIMIT_FIELDS:
        value = getattr(stage, name, None)
        if value is not None:
            return check_max_tokens(value, f"{name} of stage {model!r}")
    profile = getattr(stage, "profile", None)
    if isinstance(profile, Mapping) and profile.get("max_output_tokens") is not None:
        return check_max_tokens(profile["max_output_tokens"], f"profile['max_output_tokens'] of stage {model!r}")
    return None


def max_output_tokens_of(stages: Sequence[object]) -> int | None:
    """The largest number of output tokens any stage may write (see :func:`output_limit_of`), when every
    stage has a known limit; else ``None``."""
    limits = [output_limit_of(stage, f"{i} ({type(stage).__name__})") for i, stage in enumerate(stages)]
    ints = [x for x in limits if x is not None]
    return max(ints) if len(ints) == len(limits) else None
