"""Usage signals: the stacker over (logit, billed output tokens, answer length)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared_scorer import Cascade, StageOutput
from shared_scorer.scoring.base import ScoreRequest
from shared_scorer.scoring.signals import Stacker, answer_signals, cross_fitted, fit_stacker


def synthetic(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correct answers come with fewer output tokens; the logit alone is weakly informative."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(float)
    logits = rng.normal(0.3 * labels, 1.0)
    tokens = np.where(labels == 1, rng.integers(50, 400, n), rng.integers(300, 3000, n))
    answers = ["x" * int(k) for k in rng.integers(5, 200, n)]
    return logits, answer_signals(tokens.tolist(), answers), labels


def test_signals_are_log_tokens_and_log_length_with_nan_for_unreported():
    signals = answer_signals([99, None], ["abc", ""])
    assert signals[0].tolist() == [math.log1p(99), math.log1p(3)]
    assert math.isnan(signals[1, 0]) and signals[1, 1] == 0.0


def test_stacker_learns_that_short_reasoning_means_correct():
    logits, signals, labels = synthetic()
    stacker = fit_stacker(logits, signals, labels)
    assert stacker is not None
    assert stacker.weights[1] < 0  # more output tokens -> less likely correct
    from sklearn.metrics import roc_auc_score

    stacked = stacker.apply(logits, signals, np.full(len(labels), 0.5))
    assert roc_auc_score(labels, stacked) > roc_auc_score(labels, logits) + 0.2


def test_unreported_usage_keeps_the_plain_calibrated_score():
    stacker = Stacker([1.0, -1.0, 0.0], 0.0)
    signals = answer_signals([None, 10], ["a", "a"])
    out = stacker.apply(np.array([2.0, 2.0]), signals, np.array([0.42, 0.42]))
    assert out[0] == 0.42 and out[1] != 0.42


def test_too_few_rows_or_one_class_fit_nothing():
    logits, signals, labels = synthetic(30)
    assert fit_stacker(logits, signals, labels) is None
    logits, signals, _ = synthetic(100)
    assert fit_stacker(logits, signals, np.ones(100)) is None


def test_cross_fitted_scores_never_come_from_a_stacker_that_saw_the_row():
    logits, signals, labels = synthetic(200)
    fallback = np.full(200, 0.5)
    honest = cross_fitted(logits, signals, labels, fallback, folds=5, seed=1)
    in_sample = fit_stacker(logits, signals, labels).apply(logits, signals, fallback)  # type: ignore[union-attr]
    assert honest.shape == (200,) and not np.allclose(honest, in_sample)
    assert np.array_equal(honest, cross_fitted(logits, signals, labels, fallback, folds=5, seed=1))
    with pytest.raises(ValueError, match="folds"):
        cross_fitted(logits, signals, labels, fallback, folds=1)


def test_stacker_json_round_trip_and_bad_input():
    stacker = Stacker([0.5, -0.2, 0.1], -1.5)
    assert Stacker.from_json(stacker.to_json()) == stacker
    with pytest.raises(ValueError, match="bad stacker"):
        Stacker.from_json({"weights": [1.0], "bias": 0})


def test_cascade_hands_the_scorer_the_billed_output_tokens():
    seen: list[ScoreRequest] = []

    def scorer(request: ScoreRequest) -> float:
        seen.append(request)
        return 0.0

    cascade = Cascade(["a", "b"], [0.5], scorer, prices={"a": (1, 1), "b": (1, 1)})
    cascade.run("q", [lambda: StageOutput("x", 10, 1234), lambda: StageOutput("y", 10, 5)])
    assert [r.output_tokens for r in seen] == [1234]


def test_scorer_checkpoint_keeps_its_stackers(tmp_path):
    from shared_scorer.fitting.data import Record
    from shared_scorer.scoring.distilbert import DistilBertScorer

    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        right = bool(i % 2)
        tokens = int(rng.integers(20, 200)) if right else int(rng.integers(500, 3000))
        rows.append(Record(f"q{i}", f"question {i}?", "m", "yes" if right else "no", float(right), 0.0, 5, tokens))
    scorer = DistilBertScorer.train(rows, backbone="tiny-random", epochs=1, progress=False, val_fraction=0.5)
    assert "m" in scorer.stackers
    request = ScoreRequest("question 1?", "yes", model="m", output_tokens=40)
    loaded = DistilBertScorer.load(scorer.save(tmp_path / "s"))
    assert loaded.stackers == scorer.stackers
    assert loaded.score(request) == pytest.approx(scorer.score(request))
    # short reasoning reads as more likely correct than long reasoning, the text being the same
    long = ScoreRequest("question 1?", "yes", model="m", output_tokens=2500)
    assert loaded.score(request) > loaded.score(long)
