"""A fast trained verifier on the cache's own embeddings: a small MLP over pair features.

Features of a pair (u, v are the two questions' unit embeddings): ``u * v`` and ``|u - v|`` (the
classic sentence-pair features), the cosine, and lexical checks (content-word overlap, same numbers, same
negations, same question word, length ratio). The network is trained with scikit-learn and saved as
safetensors + JSON; prediction is plain numpy, so a lookup pays one extra embedding (the cached
question; the incoming one is memoised) and a few microseconds.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.cache.embedders import Embedder, as_embedder
from shared_scorer.cache.pairs import Pair, hit_figures
from shared_scorer.cache.trees import Trees
from shared_scorer.cache.verifier import (
    _NEGATIONS,
    _NUMBER,
    _STOP,
    ThresholdedVerifier,
    _words,
    calibration_record,
    choose_operating_point,
    guarded,
)
from shared_scorer.errors import CheckpointError, DataError

FORMAT = "frugal-cache-feature-verifier/1"
_WH = ("what", "how", "why", "when", "where", "who", "which", "is", "can", "do", "does", "should", "are")


def lexical_features(a: str, b: str) -> list[float]:
    """Content-word Jaccard, same numbers, same negations, same first question word, length ratio."""
    wa, wb = _words(a), _words(b)
    ca, cb = set(wa) - _STOP, set(wb) - _STOP
    jaccard = len(ca & cb) / len(ca | cb) if ca | cb else 1.0
    first_a = next((w for w in wa if w in _WH), "")
    first_b = next((w for w in wb if w in _WH), "")
    return [
        jaccard,
        float(sorted(_NUMBER.findall(a)) == sorted(_NUMBER.findall(b))),
        float(_NEGATIONS.intersection(wa) == _NEGATIONS.intersection(wb)),
        float(first_a == first_b),
        min(len(wa), len(wb)) / max(1, len(wa), len(wb)),
        len(ca ^ cb) / 10.0,
    ]


_GUARDS = ("numbers", "units", "dates", "negation", "entities", "roles")


def lexical_features_v2(a: str, b: str) -> list[float]:
    """:func:`lexical_features` and 16 more, all symmetric in ``a`` and ``b``: word and bigram Jaccard,
    length difference and mean, same last word, same first two words, equal after normalising, names
    (capitalised words) in one only and in both, numbers in one only, and which lexical guard (if any)
    rejects the pair (one-hot)."""
    from shared_scorer.cache.guards import _names, _tokens, guard
    from shared_scorer.cache.store import normalise_query

    wa, wb = _words(a), _words(b)
    sa, sb = set(wa), set(wb)
    ba, bb = set(itertools.pairwise(wa)), set(itertools.pairwise(wb))
    (ta, starts_a), (tb, starts_b) = _tokens(a), _tokens(b)
    na, nb = set(_names(ta, starts_a)), set(_names(tb, starts_b))
    xa, xb = set(_NUMBER.findall(a)), set(_NUMBER.findall(b))
    rejected = guard(a, b)
    return [
        *lexical_features(a, b),
        len(sa & sb) / max(1, len(sa | sb)),
        len(ba & bb) / max(1, len(ba | bb)),
        abs(len(wa) - len(wb)) / 10.0,
        (len(wa) + len(wb)) / 20.0,
        float(wa[-1:] == wb[-1:]),
        float(wa[:2] == wb[:2]),
        float(normalise_query(a) == normalise_query(b)),
        float(len(na ^ nb)),
        float(len(na & nb)),
        float(len(xa ^ xb)),
        *(float(rejected == name) for name in _GUARDS),
    ]


def pair_features(
    u: np.ndarray, v: np.ndarray, first: Sequence[str], second: Sequence[str], lexical: int = 1
) -> np.ndarray:
    """The feature matrix of pairs given their embeddings (rows of ``u`` and ``v``) and texts
    (``lexical``: 1 for :func:`lexical_features`, 2 for :func:`lexical_features_v2`)."""
    cos = np.einsum("ij,ij->i", u, v)[:, None]
    fn = lexical_features_v2 if lexical == 2 else lexical_features
    rows = np.array([fn(a, b) for a, b in zip(first, second, strict=True)], dtype=np.float32)
    return np.hstack([u * v, np.abs(u - v), cos, rows]).astype(np.float32)


class FeatureVerifier(ThresholdedVerifier):
    """P(same question) from embedding and lexical features (a small MLP), a cosine floor and a threshold.

    Train with :meth:`train` (``frugal train-cache-verifier --kind features``); it needs the cache's embedder
    (given to :class:`AnswerCache`, which hands it over, or here).

    >>> from shared_scorer.cache import HashingEmbedder
    >>> v = FeatureVerifier([np.zeros((6 + 2 * 8 + 1, 1))], [np.array([1.0])], threshold=0.5,
    ...                     min_similarity=0.0, embedder=HashingEmbedder(dim=8))
    >>> v.confirm("a?", ["b?"], [0.1])
    [True]
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        *,
        threshold: float,
        min_similarity: float,
        embedder: object | None = None,
        info: dict[str, Any] | None = None,
        trees: Trees | None = None,
        lexical: int = 1,
    ) -> None:
        self.trees = trees
        self.lexical = lexical
        self.weights = [np.asarray(w, dtype=np.float32) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float32) for b in biases]
        self.threshold = threshold
        self.min_similarity = min_similarity
        self.embedder: Embedder | None = None if embedder is None else as_embedder(embedder)
        self.info: dict[str, Any] = dict(info or {})

    def __repr__(self) -> str:
        return f"FeatureVerifier(threshold={self.threshold:.4f}, min_similarity={self.min_similarity})"

    def use_embedder(self, embedder: Embedder) -> None:
        """Use the cache's embedder (called by :class:`AnswerCache`) unless one was given."""
        if self.embedder is None:
            self.embedder = embedder

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(same) per feature row: the network's (ReLU hidden layers, logistic output), averaged with the
        boosted trees' when the verifier has them."""
        net = self.predict_network(features)
        return net if self.trees is None else (net + self.trees.probabilities(features)) / 2

    def predict_network(self, features: np.ndarray) -> np.ndarray:
        h = np.asarray(features, dtype=np.float32)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
        z = (h @ self.weights[-1] + self.biases[-1])[:, 0]
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))  # type: ignore[no-any-return]

    def probabilities(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """P(same question) per pair (embeds both sides with the cache's embedder)."""
        if self.embedder is None:
            raise CheckpointError("FeatureVerifier has no embedder: give it the cache's (use_embedder)")
        vectors = self.embedder.embed([*first, *second])
        n = len(first)
        return self.predict(pair_features(vectors[:n], vectors[n:], first, second, self.lexical))

    # ------------------------------------------------------------------ training and persistence

    @classmethod
    def train(
        cls,
        pairs: Sequence[Pair],
        *,
        embedder: object | None = None,
        hidden: Sequence[int] = (256,),
        alpha: float = 1e-2,
        val_fraction: float = 0.15,
        target_wrong_share: float = 0.05,
        margin_z: float = 1.0,
        seed: int = 0,
        trees: bool = False,
        lexical: int = 1,
    ) -> tuple[FeatureVerifier, dict[str, Any]]:
        """Fit on labelled pairs (hash-split into fitting and validation pairs); the validation pairs
        choose the cosine floor and the threshold for ``target_wrong_share`` (and are saved as the curve
        from which ``AnswerCache(max_wrong_rate=...)`` picks its point). ``trees``: also fit boosted trees
        (``HistGradientBoostingClassifier``) on the same features and average the two probabilities;
        ``lexical=2``: the richer :func:`lexical_features_v2`. The recommended verifier is
        ``hidden=(256, 64), alpha=1e-3, trees=True, lexical=2`` (``frugal train-cache-verifier``'s default)."""
        from sklearn.neural_network import MLPClassifier

        from shared_scorer.cache.verifier_training import _in_validation
        from shared_scorer.scoring.training import auroc

        started = time.perf_counter()
        model = as_embedder(embedder)
        val_mask = np.array([_in_validation(p, val_fraction) for p in pairs])
        if val_mask.all() or not val_mask.any():
            raise DataError("need both fitting and validation pairs")
        first, second = [p.cached for p in pairs], [p.incoming for p in pairs]
        vectors = model.embed(first + second)
        u, v = vectors[: len(pairs)], vectors[len(pairs) :]
        x = pair_features(u, v, first, second, lexical)
        y = np.array([p.duplicate for p in pairs])
        if lexical == 2:  # every feature is symmetric: the other order adds nothing
            fit_x, fit_y = x[~val_mask], y[~val_mask]
        else:  # both orders of each fitting pair: the question is symmetric
            fit_x = np.vstack([x[~val_mask], pair_features(v, u, second, first)[~val_mask]])
            fit_y = np.concatenate([y[~val_mask], y[~val_mask]])
        mean, scale = fit_x.mean(axis=0), fit_x.std(axis=0) + 1e-6
        net = MLPClassifier(
            hidden_layer_sizes=tuple(hidden), alpha=alpha, batch_size=128, learning_rate_init=1e-3,
            max_iter=80, early_stopping=True, n_iter_no_change=6, random_state=seed,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # sklearn's ConvergenceWarning
            net.fit((fit_x - mean) / scale, fit_y)
        # fold the standardisation into the first layer: (x - mean) / scale @ W + b
        weights, biases = list(net.coefs_), list(net.intercepts_)
        weights[0] = weights[0] / scale[:, None]
        biases[0] = biases[0] - mean @ weights[0]
        boosted = None
        if trees:
            from sklearn.ensemble import HistGradientBoostingClassifier

            boosted = Trees.from_sklearn(
                HistGradientBoostingClassifier(
                    max_iter=400, learning_rate=0.08, max_leaf_nodes=31, early_stopping=True, random_state=seed
                ).fit(fit_x, fit_y)
            )
        verifier = cls(
            weights, biases, threshold=1.0, min_similarity=1.0, embedder=model, trees=boosted, lexical=lexical
        )
        probs = verifier.predict(x[val_mask])
        sims = x[val_mask][:, 2 * u.shape[1]]
        val_first = [t for t, m in zip(first, val_mask, strict=True) if m]
        val_second = [t for t, m in zip(second, val_mask, strict=True) if m]
        point = choose_operating_point(
            guarded(probs, val_first, val_second),
            sims,
            y[val_mask],
            target_wrong_share=target_wrong_share,
            z=margin_z,
        )
        verifier.threshold, verifier.min_similarity = point["threshold"], point["min_similarity"]
        hits = (sims >= verifier.min_similarity) & (guarded(probs, val_first, val_second) >= verifier.threshold)
        report = {
            "kind": "features",
            "fit_pairs": int((~val_mask).sum()),
            "val_pairs": int(val_mask.sum()),
            "val_auroc": round(auroc(y[val_mask], probs), 4),
            "val_auroc_cosine_only": round(auroc(y[val_mask], sims), 4),
            "operating_point": point,
            "validation": hit_figures(hits, y[val_mask]),
            "train_seconds": round(time.perf_counter() - started, 1),
            "hidden": list(hidden),
            "trees": None if boosted is None else len(boosted.roots),
            "lexical": lexical,
        }
        verifier.info = {
            "embedder": repr(model), "report": report,
            "calibration": calibration_record(probs, sims, y[val_mask], val_first, val_second, margin_z),
        }  # fmt: skip
        return verifier, report

    def save(self, folder: str | Path) -> Path:
        """Write ``features.safetensors`` and ``verifier.json`` (no pickle)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"w{i}": w for i, w in enumerate(self.weights)} | {f"b{i}": b for i, b in enumerate(self.biases)}
        if self.trees is not None:
            tensors |= self.trees.arrays("trees.")
        save_file(tensors, str(folder / "features.safetensors"))
        from shared_scorer.scoring.backbone import file_sha256

        meta = {"format": FORMAT, "threshold": self.threshold, "min_similarity": self.min_similarity,
                "layers": len(self.weights), "info": self.info, "trees": self.trees is not None,
                "lexical": self.lexical,
                "sha256": {"features.safetensors": file_sha256(folder / "features.safetensors")}}  # fmt: skip
        (folder / "verifier.json").write_text(json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path, embedder: object | None = None) -> FeatureVerifier:
        from safetensors.numpy import load_file

        folder = Path(folder)
        path = folder / "verifier.json"
        for required in (path, folder / "features.safetensors"):
            if not required.is_file():
                raise CheckpointError(f"{required}: missing; not a feature-verifier folder")
        from shared_scorer.scoring.backbone import checkpoint_file, verify_sha256

        weights_file = checkpoint_file(folder, "features.safetensors", str(path))  # no link out of the folder
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            hashes = meta.get("sha256")
            if not isinstance(hashes, dict):
                raise CheckpointError(f"{path}: field 'sha256' is missing (saved before hashes: save it again)")
            verify_sha256(weights_file, hashes.get("features.safetensors"), path)
            tensors = load_file(str(weights_file))
            layers = int(meta["layers"])
            weights = [tensors[f"w{i}"] for i in range(layers)]
            biases = [tensors[f"b{i}"] for i in range(layers)]
            threshold, floor = float(meta["threshold"]), float(meta["min_similarity"])
            boosted = Trees.from_arrays(tensors, "trees.") if meta.get("trees") else None
            lexical = int(meta.get("lexical", 1))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{folder}: corrupt feature verifier ({exc})") from None
        if lexical not in (1, 2):
            raise CheckpointError(f"{path}: field 'lexical' must be 1 or 2, got {lexical}")
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: field 'format' must be {FORMAT!r}")
        return cls(weights, biases, threshold=threshold, min_similarity=floor, embedder=embedder,
                   info=meta.get("info") or {}, trees=boosted, lexical=lexical)  # fmt: skip
