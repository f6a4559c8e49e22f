"""``fit`` with every signal (issue 13): what it keeps, what it warns about, and what it refuses to threshold."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared_scorer.fitting.data import Record
from shared_scorer.fitting.fit import FitConfig, fit
from shared_scorer.fitting.signal_fit import ChanceWarning
from shared_scorer.scoring.base import ScoreRequest


class FlatScorer:
    """A text scorer that knows nothing (0.5 for everything) but can carry combiners, like DistilBertScorer."""

    def __init__(self) -> None:
        self.combiners: dict[str, Any] = {}
        self.prior: Any = None

    def score_batch(self, requests: list[ScoreRequest]) -> list[float]:
        return [0.5] * len(requests)

    def save(self, path: Path) -> Path:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)


def flat_trainer(records: Any, seed: int) -> FlatScorer:
    return FlatScorer()


def fake_embed(texts: list[str]) -> np.ndarray:
    return np.array([[b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts])


def records(n: int = 150, seed: int = 0) -> list[Record]:
    """``cheap`` is right exactly when it is confident (its logprob says so); ``noise`` is right at random and
    its logprob says nothing; ``big`` is always right and costs 10x."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        q, query = f"q{i}", f"question {i}"
        confident = rng.random() < 0.5
        rows.append(Record(q, query, "cheap", "A" if confident else "B", float(confident), 0.001,
                           logprob=-0.05 if confident else -2.0))  # fmt: skip
        right = rng.random() < 0.5
        rows.append(Record(q, query, "noise", "C", float(right), 0.002, logprob=float(-rng.random())))
        rows.append(Record(q, query, "big", "A", 1.0, 0.01, logprob=-0.01))
    return rows


def test_fit_keeps_the_logprob_warns_about_noise_and_builds_no_threshold_on_it(tmp_path: Path) -> None:
    config = FitConfig(folds=3, caps="none", embed=fake_embed, max_depth=2)
    with pytest.warns(ChanceWarning, match="noise is no better than chance"):
        result = fit(records(), tmp_path, config, train=flat_trainer)
    info = result.strategy.info
    assert "noise" in info["no_better_than_chance"] and "cheap" not in info["no_better_than_chance"]
    assert info["signals"]["cheap"]["first/with_logprob"]["kept"] == ["logprob"]
    assert info["signals"]["cheap"]["first/with_logprob"]["oof_auroc"] == 1.0
    assert info["out_of_fold_auroc"]["cheap"] == 1.0
    # noise's score is one constant: a threshold on it accepts everything or nothing
    noise = result.table.models.index("noise")
    assert len(np.unique(result.table.scores[:, noise])) == 1
    # the combiners ship with the scorer, and the best chain is cheap -> big at 100% for ~0.0060 a query
    assert set(result.scorer.combiners) == {"cheap", "noise", "big"}
    best = result.strategy.frontier.points[-1]
    assert best.chain[0].startswith("cheap") and best.accuracy == 1.0
    assert best.cost == pytest.approx(
        0.001 + 0.01 * (1 - np.mean([r.correct for r in records() if r.model == "cheap"]))
    )


def test_signals_none_is_the_text_score_alone(tmp_path: Path) -> None:
    config = FitConfig(folds=3, caps="none", embed=fake_embed, max_depth=2, signals=())
    result = fit(records(), tmp_path, config, train=flat_trainer)
    assert result.scorer.combiners == {} and result.strategy.info["signals"] == {}
    assert not any("|prior>=" in m for m in result.table.models)
