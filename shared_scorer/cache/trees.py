"""Gradient-boosted trees as plain arrays: trained with scikit-learn's ``HistGradientBoostingClassifier``,
saved as safetensors (no pickle), evaluated with numpy (all trees at once, one step per depth level).

>>> import numpy as np
>>> from sklearn.ensemble import HistGradientBoostingClassifier
>>> x = np.random.default_rng(0).random((300, 4)); y = x[:, 0] + x[:, 1] > 1
>>> model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
>>> trees = Trees.from_sklearn(model)
>>> bool(np.allclose(trees.logits(x), model.decision_function(x)))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared_scorer.errors import CheckpointError

_FIELDS = ("feature", "threshold", "left", "right", "leaf", "value", "missing_left", "roots", "baseline")


class Trees:
    """A binary classifier's boosted trees: ``logits(x) = baseline + sum of the leaves x reaches``."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [f for f in _FIELDS if f not in arrays]
        if missing:
            raise CheckpointError(f"boosted trees: missing arrays {missing}")
        self.feature = np.asarray(arrays["feature"], dtype=np.int64)
        self.threshold = np.asarray(arrays["threshold"], dtype=np.float64)
        self.left = np.asarray(arrays["left"], dtype=np.int64)
        self.right = np.asarray(arrays["right"], dtype=np.int64)
        self.leaf = np.asarray(arrays["leaf"], dtype=bool)
        self.value = np.asarray(arrays["value"], dtype=np.float64)
        self.missing_left = np.asarray(arrays["missing_left"], dtype=bool)
        self.roots = np.asarray(arrays["roots"], dtype=np.int64)
        self.baseline = float(np.asarray(arrays["baseline"]).reshape(-1)[0])
        n = len(self.feature)
        if any(len(a) != n for a in (self.threshold, self.left, self.right, self.leaf, self.value, self.missing_left)):
            raise CheckpointError("boosted trees: node arrays of different lengths")
        inner = ~self.leaf
        if (self.roots >= n).any() or (self.left[inner] >= n).any() or (self.right[inner] >= n).any():
            raise CheckpointError("boosted trees: a node points outside the arrays")

    @classmethod
    def from_sklearn(cls, model: Any) -> Trees:
        """The trees of a fitted binary ``HistGradientBoostingClassifier`` (numerical features only)."""
        parts, roots, offset = [], [], 0
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise CheckpointError("boosted trees: categorical splits are not supported")
            roots.append(offset)
            parts.append((nodes, offset))
            offset += len(nodes)
        cat = np.concatenate
        return cls(
            {
                "feature": cat([n["feature_idx"] for n, _ in parts]).astype(np.int64),
                "threshold": cat([n["num_threshold"] for n, _ in parts]).astype(np.float64),
                "left": cat([n["left"].astype(np.int64) + o for n, o in parts]),
                "right": cat([n["right"].astype(np.int64) + o for n, o in parts]),
                "leaf": cat([n["is_leaf"] for n, _ in parts]).astype(np.uint8),
                "value": cat([n["value"] for n, _ in parts]).astype(np.float64),
                "missing_left": cat([n["missing_go_to_left"] for n, _ in parts]).astype(np.uint8),
                "roots": np.asarray(roots, dtype=np.int64),
                "baseline": np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1),
            }
        )

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays to save (safetensors needs plain dtypes: booleans as uint8)."""
        out = {
            "feature": self.feature, "threshold": self.threshold, "left": self.left, "right": self.right,
            "leaf": self.leaf.astype(np.uint8), "value": self.value, "missing_left": self.missing_left.astype(np.uint8),
            "roots": self.roots, "baseline": np.array([self.baseline]),
        }  # fmt: skip
        return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}

    @classmethod
    def from_arrays(cls, tensors: dict[str, np.ndarray], prefix: str = "") -> Trees:
        return cls({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) per row of ``x``."""
        x = np.asarray(x, dtype=np.float64)
        rows = np.arange(len(x))[None, :]
        node = np.repeat(self.roots[:, None], len(x), axis=1)
        while True:
            inner = ~self.leaf[node]
            if not inner.any():
                break
            values = x[rows, self.feature[node]]
            go_left = np.where(np.isnan(values), self.missing_left[node], values <= self.threshold[node])
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        return self.baseline + self.value[node].sum(axis=0)  # type: ignore[no-any-return]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.logits(x), -60, 60)))  # type: ignore[no-any-return]
