"""Signals beside the text: what a stage's billed usage says about its answer.

A provider bills reasoning tokens as output tokens, so a model that thought long about a question tells
us something the answer's text does not. Measured on SimpleQA's test split (AUROC of ``-output_tokens``
alone for being correct): gemini-3.1-pro 0.81, gpt-5.2-high 0.77, claude-opus 0.72, gemini-3-flash 0.63.
A :class:`Stacker` is a per-model logistic regression on (scorer logit, log output tokens, log answer
length); it replaces the plain calibrator when the stage reported its usage, and the plain calibrator is
used when it did not. Its output is a probability: logistic regression is calibrated by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_scorer.errors import ConfigurationError

MIN_ROWS = 40
"""Fewer rows (or only one class) than this and no stacker is fitted: the plain calibrator stays."""


def answer_signals(output_tokens: Sequence[int | None], answers: Sequence[str]) -> np.ndarray:
    """``(n, 2)``: log(1 + output tokens) (NaN when not reported) and log(1 + answer characters)."""
    tokens = [math.log1p(t) if t is not None else math.nan for t in output_tokens]
    chars = [math.log1p(len(a)) for a in answers]
    return np.column_stack([np.asarray(tokens, dtype=float), np.asarray(chars, dtype=float)]).reshape(-1, 2)


@dataclass(frozen=True)
class Stacker:
    """``sigmoid(w · [logit, log tokens, log chars] + b)``; JSON-serialisable.

    >>> stacker = Stacker([1.0, -0.5, 0.0], 2.0)
    >>> stacker.apply(np.array([0.0, 0.0]), answer_signals([None, 54], ["a", "a"]), np.array([0.3, 0.3])).round(2)
    array([0.3, 0.5])
    """

    weights: list[float]
    bias: float

    def apply(self, logits: np.ndarray, signals: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """Probabilities; rows whose output tokens were not reported keep their ``fallback`` value."""
        x = np.column_stack([np.asarray(logits, dtype=float), signals])
        known = ~np.isnan(x).any(axis=1)
        out = np.asarray(fallback, dtype=float).copy()
        z = x[known] @ np.asarray(self.weights, dtype=float) + self.bias
        out[known] = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"weights": list(self.weights), "bias": self.bias}

    @classmethod
    def from_json(cls, data: Any) -> Stacker:
        if not isinstance(data, dict) or not isinstance(data.get("weights"), list) or len(data["weights"]) != 3:
            raise ValueError(f"bad stacker {data!r:.120}")
        return cls([float(w) for w in data["weights"]], float(data["bias"]))


def _usable(logits: np.ndarray, signals: np.ndarray, labels: np.ndarray) -> np.ndarray:
    known = ~np.isnan(np.column_stack([logits, signals])).any(axis=1)
    if known.sum() < MIN_ROWS or len(set(np.round(labels[known]).tolist())) < 2:
        return np.zeros(len(labels), dtype=bool)
    return known


def fit_stacker(logits: np.ndarray, signals: np.ndarray, labels: np.ndarray, *, c: float = 1.0) -> Stacker | None:
    """A stacker fitted on the rows with known usage, or ``None`` when there are too few of them."""
    from sklearn.linear_model import LogisticRegression

    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels, dtype=float)
    known = _usable(logits, signals, labels)
    if not known.any():
        return None
    x = np.column_stack([logits, signals])[known]
    model = LogisticRegression(C=c, max_iter=1000).fit(x, np.round(labels[known]).astype(int))
    return Stacker([float(w) for w in model.coef_[0]], float(model.intercept_[0]))


def cross_fitted(
    logits: np.ndarray, signals: np.ndarray, labels: np.ndarray, fallback: np.ndarray, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold stacked probabilities (each row scored by a stacker that never saw it)."""
    if folds < 2:
        raise ConfigurationError(f"folds must be >= 2, got {folds}")
    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels, dtype=float)
    out = np.asarray(fallback, dtype=float).copy()
    known = np.flatnonzero(_usable(logits, signals, labels))
    if len(known) == 0:
        return out
    order = np.random.default_rng(seed).permutation(known)
    for f in range(folds):
        held = order[f::folds]
        inside = np.setdiff1d(known, held)
        stacker = fit_stacker(logits[inside], signals[inside], labels[inside])
        if stacker is not None:
            out[held] = stacker.apply(logits[held], signals[held], out[held])
    return out
