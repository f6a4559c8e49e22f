"""The strongest trained verifier: a DistilBERT pair classifier and the feature MLP, stacked.

The two see different things (the cross-encoder reads both questions token by token; the feature model
sees the cache's own embeddings and lexical checks), so their errors differ: on held-out QQP pairs the
stack serves about twice as many duplicates at a 5% wrong-hit share as either alone. The combination is a
logistic regression over the two logits, fitted on validation pairs neither part trained on; the cosine
floor and the threshold are then chosen on those same pairs for the target wrong-hit share.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.cache.embedders import Embedder, as_embedder
from shared_scorer.cache.features import FORMAT as FEATURES_FORMAT
from shared_scorer.cache.features import FeatureVerifier
from shared_scorer.cache.pairs import Pair, hit_figures
from shared_scorer.cache.verifier import (
    PairVerifier,
    ThresholdedVerifier,
    calibration_record,
    choose_operating_point,
    guarded,
)
from shared_scorer.errors import CheckpointError, DataError
from shared_scorer.scoring.training import sigmoid

FORMAT = "frugal-cache-stacked-verifier/1"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))  # type: ignore[no-any-return]


class StackedVerifier(ThresholdedVerifier):
    """P(same question) = sigmoid(w_pair * pair logit + w_features * feature logit + bias), with a cosine
    floor and a threshold. Train with :meth:`train` (``frugal train-cache-verifier --kind stacked``)."""

    def __init__(
        self,
        pair: PairVerifier,
        features: FeatureVerifier,
        weights: Sequence[float],
        *,
        threshold: float,
        min_similarity: float,
        info: dict[str, Any] | None = None,
    ) -> None:
        if len(weights) != 3:
            raise CheckpointError(f"a stacked verifier needs 3 weights (pair, features, bias), got {len(weights)}")
        self.pair = pair
        self.features = features
        self.weights = [float(w) for w in weights]
        self.threshold = threshold
        self.min_similarity = min_similarity
        self.info: dict[str, Any] = dict(info or {})

    def __repr__(self) -> str:
        return f"StackedVerifier(threshold={self.threshold:.4f}, min_similarity={self.min_similarity})"

    def use_embedder(self, embedder: Embedder) -> None:
        """Hand the cache's embedder to the feature part (called by :class:`AnswerCache`)."""
        self.features.use_embedder(embedder)

    def combine(self, pair_logits: np.ndarray, feature_logits: np.ndarray) -> np.ndarray:
        a, b, c = self.weights
        return sigmoid(a * np.asarray(pair_logits, dtype=float) + b * np.asarray(feature_logits, dtype=float) + c)

    def probabilities(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        if not first:
            return np.zeros(0)
        return self.combine(self.pair.logits(first, second), _logit(self.features.probabilities(first, second)))

    # ------------------------------------------------------------------ training and persistence

    @classmethod
    def train(
        cls,
        pairs: Sequence[Pair],
        *,
        pair: PairVerifier | None = None,
        pair_config: Any = None,
        embedder: object | None = None,
        val_fraction: float = 0.15,
        target_wrong_share: float = 0.05,
        margin_z: float = 1.0,
        seed: int = 0,
        feature_options: dict[str, Any] | None = None,
    ) -> tuple[StackedVerifier, dict[str, Any]]:
        """Train both parts on the fitting pairs (or reuse ``pair``, a pair classifier trained on the same
        split), fit the combination and the operating point on the validation pairs."""
        from sklearn.linear_model import LogisticRegression

        from shared_scorer.cache.verifier_training import VerifierConfig, _in_validation, train_verifier
        from shared_scorer.scoring.training import auroc

        started = time.perf_counter()
        model = as_embedder(embedder)
        pairs = list(pairs)
        val = [p for p in pairs if _in_validation(p, val_fraction)]
        if len(val) < 2 or len({p.duplicate for p in val}) < 2:
            raise DataError("the validation pairs need both duplicates and non-duplicates")
        features, feature_report = FeatureVerifier.train(
            pairs, embedder=model, val_fraction=val_fraction, target_wrong_share=target_wrong_share,
            margin_z=margin_z, seed=seed, **(feature_options or {}),
        )  # fmt: skip
        pair_report: dict[str, Any] = {"reused": True}
        if pair is None:
            config = replace(pair_config or VerifierConfig(seed=seed), val_fraction=val_fraction)
            pair, pair_report = train_verifier(pairs, config, embedder=model)
        first, second = [p.cached for p in val], [p.incoming for p in val]
        y = np.array([p.duplicate for p in val])
        x = np.column_stack([pair.logits(first, second), _logit(features.probabilities(first, second))])
        combiner = LogisticRegression(C=1.0).fit(x, y)
        weights = [*map(float, combiner.coef_[0]), float(combiner.intercept_[0])]
        verifier = cls(pair, features, weights, threshold=1.0, min_similarity=1.0)
        probs = verifier.combine(x[:, 0], x[:, 1])
        vectors = model.embed([t for p in val for t in (p.cached, p.incoming)])
        sims = np.einsum("ij,ij->i", vectors[0::2], vectors[1::2])
        point = choose_operating_point(
            guarded(probs, first, second), sims, y, target_wrong_share=target_wrong_share, z=margin_z
        )
        verifier.threshold, verifier.min_similarity = point["threshold"], point["min_similarity"]
        hits = (sims >= verifier.min_similarity) & (guarded(probs, first, second) >= verifier.threshold)
        report = {
            "kind": "stacked",
            "val_pairs": len(val),
            "val_auroc": round(auroc(y, probs), 4),
            "val_auroc_pair": round(auroc(y, x[:, 0]), 4),
            "val_auroc_features": round(auroc(y, x[:, 1]), 4),
            "weights": [round(w, 4) for w in weights],
            "operating_point": point,
            "validation": hit_figures(hits, y),
            "train_seconds": round(time.perf_counter() - started, 1),
            "parts": {"pair": pair_report.get("val_auroc", "reused"), "features": feature_report["val_auroc"]},
        }
        verifier.info = {"report": report, "calibration": calibration_record(probs, sims, y, first, second, margin_z)}
        return verifier, report

    def save(self, folder: str | Path) -> Path:
        """Write ``pair/``, ``features/`` and ``verifier.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.pair.save(folder / "pair")
        self.features.save(folder / "features")
        meta = {"format": FORMAT, "weights": self.weights, "threshold": self.threshold,
                "min_similarity": self.min_similarity, "info": self.info}  # fmt: skip
        (folder / "verifier.json").write_text(json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path, embedder: object | None = None) -> StackedVerifier:
        """Load a folder written by :meth:`save`; anything missing or corrupt is a :class:`CheckpointError`."""
        folder = Path(folder)
        path = folder / "verifier.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            weights = [float(w) for w in meta["weights"]]
            threshold, floor = float(meta["threshold"]), float(meta["min_similarity"])
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; not a stacked-verifier folder") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: corrupt stacked verifier ({exc})") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: field 'format' must be {FORMAT!r}")
        pair = PairVerifier.load(folder / "pair")
        features = FeatureVerifier.load(folder / "features", embedder=embedder)
        return cls(pair, features, weights, threshold=threshold, min_similarity=floor, info=meta.get("info") or {})


def load_verifier(folder: str | Path) -> Any:
    """A :class:`~shared_scorer.cache.features.FeatureVerifier`, :class:`StackedVerifier` or
    :class:`~shared_scorer.cache.verifier.PairVerifier`, by the format named in its ``verifier.json``."""
    path = Path(folder) / "verifier.json"
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable ({exc})") from None
    if kind == FORMAT:
        return StackedVerifier.load(folder)
    return FeatureVerifier.load(folder) if kind == FEATURES_FORMAT else PairVerifier.load(folder)
