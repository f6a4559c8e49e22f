"""How likely each model is to answer a query correctly, from the query alone, before any call.

A logistic regression per model on the query's MiniLM embedding (local weights,
:class:`~shared_scorer.embeddings.MiniLMEmbedder`). It serves twice: as the ``prior`` feature of a stage's
:class:`~shared_scorer.scoring.combiner.Combiner`, and as the
router that lets a cascade start past a stage it predicts will fail (a strategy's ``gates``:
stage ``i`` is skipped, at no cost, when its prior is below ``gates[i]``).

Numpy at scoring time; the embedder (torch) is loaded on first use.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CACHE_SIZE = 4096
"""Queries whose predictions are kept (a cascade asks once per stage; a batch asks for many at once)."""


@dataclass
class QueryPrior:
    """Per model: ``sigmoid(w · embed(query) + b)``; JSON-serialisable.

    >>> prior = QueryPrior({"m": ([1.0, 0.0], 0.0)})
    >>> round(float(prior.predict_vectors(np.array([[2.0, 5.0]]))["m"][0]), 3)
    0.881
    """

    weights: dict[str, tuple[list[float], float]]
    embedder: Any = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _cache: OrderedDict[str, dict[str, float]] = field(default_factory=OrderedDict, repr=False, compare=False)

    @property
    def models(self) -> list[str]:
        return list(self.weights)

    def predict_vectors(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Each model's probabilities for rows of query embeddings."""
        out = {}
        for model, (w, b) in self.weights.items():
            z = np.asarray(vectors, dtype=float) @ np.asarray(w, dtype=float) + b
            out[model] = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
        return out

    def predict(self, query: str) -> dict[str, float]:
        """Each model's probability of answering ``query`` correctly (recent queries' results are reused)."""
        return self.predict_many([query])[0]

    def predict_many(self, queries: Sequence[str]) -> list[dict[str, float]]:
        """:meth:`predict` for many queries, embedding the ones not seen recently in one batch."""
        with self._lock:
            missing = list(dict.fromkeys(q for q in queries if q not in self._cache))
            if missing:
                if self.embedder is None:
                    from shared_scorer.embeddings import MiniLMEmbedder

                    self.embedder = MiniLMEmbedder()
                predicted = self.predict_vectors(self.embedder.embed(missing))
                for i, q in enumerate(missing):
                    self._cache[q] = {m: float(v[i]) for m, v in predicted.items()}
            out = []
            for q in queries:
                self._cache.move_to_end(q)
                out.append(dict(self._cache[q]))
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return out

    def to_json(self) -> dict[str, Any]:
        return {m: {"weights": list(w), "bias": b} for m, (w, b) in self.weights.items()}

    @classmethod
    def from_json(cls, data: Any) -> QueryPrior:
        if not isinstance(data, dict):
            raise ValueError(f"a query prior must be a JSON object, got {data!r:.80}")
        weights: dict[str, tuple[list[float], float]] = {}
        for model, part in data.items():
            if not isinstance(part, dict) or not isinstance(part.get("weights"), list):
                raise ValueError(f"bad query prior for {model!r}")
            weights[str(model)] = ([float(x) for x in part["weights"]], float(part["bias"]))
        return cls(weights)


def fit_prior(vectors: np.ndarray, labels: Mapping[str, np.ndarray], *, c: float = 1.0) -> QueryPrior:
    """One logistic regression per model on query embeddings (a model whose labels are all one class gets
    the constant that class implies)."""
    from sklearn.linear_model import LogisticRegression

    weights: dict[str, tuple[list[float], float]] = {}
    for model, y in labels.items():
        target = np.round(np.asarray(y, dtype=float)).astype(int)
        if len(set(target.tolist())) < 2:
            rate = float(np.clip(target.mean() if target.size else 0.5, 1e-3, 1 - 1e-3))
            weights[model] = ([0.0] * vectors.shape[1], float(np.log(rate / (1 - rate))))
            continue
        fitted = LogisticRegression(C=c, max_iter=2000).fit(vectors, target)
        weights[model] = ([float(w) for w in fitted.coef_[0]], float(fitted.intercept_[0]))
    return QueryPrior(weights)


def cross_fitted_prior(
    vectors: np.ndarray, labels: Mapping[str, np.ndarray], fold: Sequence[int], *, c: float = 1.0
) -> dict[str, np.ndarray]:
    """Out-of-fold prior probabilities per model: each query scored by priors fitted on the other folds."""
    fold_array = np.asarray(fold)
    out = {m: np.empty(len(fold_array)) for m in labels}
    for f in sorted(set(fold_array.tolist())):
        held, inside = fold_array == f, fold_array != f
        fitted = fit_prior(vectors[inside], {m: np.asarray(y)[inside] for m, y in labels.items()}, c=c)
        for m, p in fitted.predict_vectors(vectors[held]).items():
            out[m][held] = p
    return out
