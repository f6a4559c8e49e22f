"""Every signal a stage gives, combined per stage into one calibrated probability.

A one-token answer (a multiple-choice letter) tells a text scorer almost nothing; other signals are free:

* ``text``: the DistilBERT scorer's logit for (query, answer);
* ``logprob``: the provider's own log-probability of the answer (OpenAI-compatible APIs return it when
  asked; :class:`~shared_scorer.scoring.base.ScoreRequest` carries it);
* ``tokens`` and ``chars``: billed output tokens (reasoning included) and the answer's length;
* ``prior``: how likely this model is to be right on this query before any call (a logistic model on the
  query's MiniLM embedding, :mod:`shared_scorer.scoring.prior`);
* ``agree``: whether this answer agrees with the previous stage's answer (:func:`agreement`).

A :class:`Combiner` is a logistic regression on the standardised features it kept; ``frugal fit``
(:mod:`shared_scorer.fitting.combine`) fits, per model, one for the first stage of a chain and one for a
later stage (with ``agree``), each with and without ``logprob``, keeping a signal only when it raises
out-of-fold AUROC. A request without a log-probability (its provider returned none) is scored by the
combiner fitted without it; any other missing feature takes its training mean. A combiner that kept no
feature is a constant: that stage's scorer is no better than chance, and no threshold is built on it.

Numpy only: this module is on the scoring path.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEATURES = ("text", "logprob", "tokens", "chars", "prior", "agree")
"""Every feature a combiner may use, in a fixed order."""

_LETTER = re.compile(r"^\W*(?:answer\s*(?:is)?\s*[:\-]?\s*)?\(?([A-J])\)?[\s.:)]*$", re.IGNORECASE)
_MARKED = re.compile(r"(?:####|\\boxed\{|final answer\s*(?:is)?\s*[:\-]?)\s*([^\n}]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ARTICLES = {"a", "an", "the"}


def final_answer(text: str) -> str | None:
    """The answer's short final form where it has one: an option letter, or a marked final answer
    (``#### x``, ``\\boxed{x}``, ``final answer: x``) as a number when it is one; else ``None``.

    >>> final_answer("B"), final_answer("(c)."), final_answer("so 3 + 4 = 7\\n#### 7.0"), final_answer("Paris")
    ('B', 'C', '7', None)
    """
    stripped = text.strip()
    letter = _LETTER.match(stripped) if len(stripped) <= 24 else None
    if letter:
        return letter.group(1).upper()
    marked = list(_MARKED.finditer(stripped))
    if not marked:
        return None
    value = marked[-1].group(1).strip().strip(" .$")
    number = _NUMBER.fullmatch(value)
    if number:
        x = float(value.replace(",", ""))
        return str(int(x)) if x.is_integer() else repr(x)
    return value.lower()


def _tokens(text: str) -> list[str]:
    cleaned = text.lower().translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return [t for t in cleaned.split() if t not in _ARTICLES]


def agreement(answer: str, previous: str) -> float:
    """How much two answers to the same query agree, in [0, 1]: exact comparison of their final forms
    (:func:`final_answer`) when both have one, else the F1 of their normalised word overlap.

    >>> agreement("B", "b."), agreement("#### 12", "so it is 12.0 \\n#### 12"), agreement("B", "C")
    (1.0, 1.0, 0.0)
    >>> round(agreement("George Eliot wrote it", "It was George Eliot"), 2)
    0.75
    """
    a, b = final_answer(answer), final_answer(previous)
    if a is not None and b is not None:
        return 1.0 if a == b else 0.0
    x, y = _tokens(answer), _tokens(previous)
    if not x or not y:
        return 1.0 if not x and not y else 0.0
    common = sum(min(x.count(t), y.count(t)) for t in set(x))
    if common == 0:
        return 0.0
    precision, recall = common / len(x), common / len(y)
    return 2 * precision * recall / (precision + recall)


def logit(p: float | np.ndarray) -> Any:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    q = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def raw_features(
    *,
    text: float | None,
    logprob: float | None,
    output_tokens: int | None,
    answer: str,
    prior: float | None,
    previous: str | None,
) -> dict[str, float]:
    """One row's features (NaN where unknown); ``prior`` is a probability, ``previous`` the last answer."""
    nan = math.nan
    return {
        "text": nan if text is None else float(text),
        "logprob": nan if logprob is None else max(float(logprob), -50.0),
        "tokens": nan if output_tokens is None else math.log1p(max(int(output_tokens), 0)),
        "chars": math.log1p(len(answer)),
        "prior": nan if prior is None else float(logit(prior)),
        "agree": nan if previous is None else agreement(answer, previous),
    }


@dataclass(frozen=True)
class Combiner:
    """``sigmoid(bias + sum_k weight_k * (x_k - mean_k) / scale_k)`` over the features it kept.

    >>> c = Combiner(("logprob",), (2.0,), bias=0.0, mean=(-1.0,), scale=(1.0,))
    >>> round(c.apply({"logprob": -1.0}), 3), round(c.apply({"logprob": 0.0}), 3), round(c.apply({}), 3)
    (0.5, 0.881, 0.5)
    >>> Combiner((), (), bias=0.0).constant
    True
    """

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    auroc: float | None = None
    """Out-of-fold AUROC of this combiner on the fitting data (``None``: not measured)."""

    @property
    def constant(self) -> bool:
        """It kept no feature: every answer gets the same score (the stage's base rate)."""
        return not self.features

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Standardised feature matrix; an unknown value takes the training mean (0 after standardising)."""
        x = np.array([[r.get(f, math.nan) for f in self.features] for r in rows], dtype=float).reshape(
            len(rows), len(self.features)
        )
        if self.features:
            x = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.nan_to_num(x, nan=0.0)

    def apply_many(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        linear = self.matrix(rows) @ np.asarray(self.weights, dtype=float) if self.features else np.zeros(len(rows))
        z = self.bias + linear
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))), dtype=float).reshape(len(rows))

    def apply(self, row: Mapping[str, float]) -> float:
        return float(self.apply_many([row])[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "weights": list(self.weights),
            "bias": self.bias,
            "mean": list(self.mean),
            "scale": list(self.scale),
            "auroc": self.auroc,
        }

    @classmethod
    def from_json(cls, data: Any) -> Combiner:
        if not isinstance(data, dict):
            raise ValueError(f"a combiner must be a JSON object, got {data!r:.80}")
        features = tuple(str(f) for f in data.get("features", []))
        unknown = [f for f in features if f not in FEATURES]
        sizes = {len(data.get(k, [])) for k in ("weights", "mean", "scale")}
        if unknown or sizes != {len(features)}:
            raise ValueError(f"bad combiner {data!r:.120}")
        auroc = data.get("auroc")
        return cls(
            features,
            tuple(float(w) for w in data["weights"]),
            float(data["bias"]),
            tuple(float(m) for m in data["mean"]),
            tuple(float(s) for s in data["scale"]),
            None if auroc is None else float(auroc),
        )


POSITIONS = ("first", "after")
"""``first``: the stage had no earlier answer to compare with; ``after``: it had one (``agree`` known)."""


@dataclass
class ModelCombiners:
    """One model's combiners: by position (``first``/``after``) and by whether a log-probability is known."""

    with_logprob: dict[str, Combiner] = field(default_factory=dict)
    without_logprob: dict[str, Combiner] = field(default_factory=dict)

    def pick(self, position: str, has_logprob: bool) -> Combiner | None:
        chosen = self.with_logprob.get(position) if has_logprob else None
        return chosen or self.without_logprob.get(position) or self.without_logprob.get("first")

    def to_json(self) -> dict[str, Any]:
        return {
            "with_logprob": {k: c.to_json() for k, c in self.with_logprob.items()},
            "without_logprob": {k: c.to_json() for k, c in self.without_logprob.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> ModelCombiners:
        if not isinstance(data, dict):
            raise ValueError(f"model combiners must be a JSON object, got {data!r:.80}")
        out = cls()
        for key, target in (("with_logprob", out.with_logprob), ("without_logprob", out.without_logprob)):
            part = data.get(key, {})
            if not isinstance(part, dict) or set(part) - set(POSITIONS):
                raise ValueError(f"bad {key} {part!r:.80}")
            target.update({k: Combiner.from_json(v) for k, v in part.items()})
        return out


def combined_score(
    combiners: ModelCombiners,
    *,
    text: float | None,
    logprob: float | None,
    output_tokens: int | None,
    answer: str,
    prior: float | None,
    previous: str | None,
) -> float | None:
    """The combined probability of one answer, or ``None`` when ``combiners`` has none for this case."""
    position = "first" if previous is None else "after"
    chosen = combiners.pick(position, logprob is not None)
    if chosen is None:
        return None
    row = raw_features(
        text=text, logprob=logprob, output_tokens=output_tokens, answer=answer, prior=prior, previous=previous
    )
    return chosen.apply(row)
