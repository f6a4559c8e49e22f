"""The floor the DistilBERT scorer must beat: logistic regression on frozen MiniLM embeddings of the pair.

Features of a pair are ``[e(query), e(answer), e(query) * e(answer)]`` with ``e`` the L2-normalised
all-MiniLM-L6-v2 sentence embedding (:class:`~shared_scorer.embeddings.MiniLMEmbedder`); one logistic
regression is fitted per candidate model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared_scorer.errors import DataError, ScorerError
from shared_scorer.fitting.data import Record
from shared_scorer.scoring.base import ScoreRequest


def pair_features(embedder: Any, queries: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """``[e(q), e(a), e(q) * e(a)]`` for each pair; each distinct text is embedded once."""
    texts = list(dict.fromkeys([*queries, *answers]))
    vectors = embedder.embed(texts)
    where = {t: i for i, t in enumerate(texts)}
    q = vectors[[where[t] for t in queries]]
    a = vectors[[where[t] for t in answers]]
    return np.hstack([q, a, q * a]).astype(np.float32)


class EmbeddingLogRegScorer:
    """Per-model logistic regression on frozen MiniLM pair embeddings (the baseline scorer).

    >>> from shared_scorer.fitting.data import Record
    >>> rows = [Record(f"q{i}", f"question {i}?", "m", "yes" if i % 2 else "I don't know", float(i % 2), 0.0)
    ...         for i in range(10)]
    >>> baseline = EmbeddingLogRegScorer().fit(rows)
    >>> baseline.score(ScoreRequest("question 3?", "yes", model="m")) > 0.5
    True
    """

    def __init__(self, embedder: Any = None, c: float = 1.0, seed: int = 0) -> None:
        if embedder is None:
            from shared_scorer.embeddings import MiniLMEmbedder

            embedder = MiniLMEmbedder()
        self.embedder = embedder
        self.c = c
        self.seed = seed
        self.classifiers: dict[str, Any] = {}
        self.priors: dict[str, float] = {}

    def fit(self, records: Sequence[Record]) -> EmbeddingLogRegScorer:
        from sklearn.linear_model import LogisticRegression

        if not records:
            raise DataError("no rows to fit the baseline on")
        features = pair_features(self.embedder, [r.query for r in records], [r.answer for r in records])
        labels = np.array([r.correct >= 0.5 for r in records])
        for model in dict.fromkeys(r.model for r in records):
            index = [i for i, r in enumerate(records) if r.model == model]
            y = labels[index]
            self.priors[model] = float(y.mean())
            if y.all() or not y.any():
                continue
            clf = LogisticRegression(C=self.c, max_iter=2000, random_state=self.seed)
            self.classifiers[model] = clf.fit(features[index], y)
        return self

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[float]:
        requests = list(requests)
        if not requests:
            return []
        unknown = {r.model for r in requests} - set(self.priors)
        if unknown:
            raise ScorerError(f"the baseline was not fitted for models {sorted(unknown)}")
        features = pair_features(self.embedder, [r.query for r in requests], [r.answer for r in requests])
        out = np.empty(len(requests))
        for model in dict.fromkeys(r.model for r in requests):
            index = [i for i, r in enumerate(requests) if r.model == model]
            clf = self.classifiers.get(model)
            out[index] = clf.predict_proba(features[index])[:, 1] if clf is not None else self.priors[model]
        return [float(v) for v in out]

    def score(self, request: ScoreRequest) -> float:
        return self.score_batch([request])[0]
