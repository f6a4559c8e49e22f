"""The in-process vector index of the embedded store: one partition per scope, searched by dot product.

A partition holds unit vectors in a growing float32 matrix. Up to ``exact_limit`` rows it is searched
exactly (one matrix-vector product). Above, the matrix product over every row is memory-bound (about
17 ms for 100,000 x 384 on one core), so a 384-bit SimHash sketch of each row (the signs of a fixed
Gaussian random projection) is scanned first: the probability that one bit differs between two unit
vectors at angle θ is θ/π, so every row whose cosine with the query can reach ``min_similarity`` lies,
with overwhelming probability, within a Hamming radius derived from that angle (mean plus 4.5 standard
deviations: a miss chance of a few in a million per qualifying row). Only rows inside the radius are
scored exactly; the bench reports the index's recall against exact search.

>>> import numpy as np
>>> index = VectorIndex(dim=4)
>>> index.add("scope", [7, 8], np.eye(4, dtype=np.float32)[:2], [None, None])
>>> index.search("scope", np.eye(4, dtype=np.float32)[1], k=1, min_similarity=0.5, now=0.0)
[(8, 1.0)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SKETCH_BITS = 384
_WORDS = SKETCH_BITS // 64
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 has ``bitwise_count``; older numpy uses a byte table)."""
    count = getattr(np, "bitwise_count", None)
    if count is not None:
        return count(words)  # type: ignore[no-any-return]
    as_bytes = words.view(np.uint8).reshape(*words.shape, 8)
    return _POP8[as_bytes].sum(axis=-1, dtype=np.uint8)  # type: ignore[no-any-return]


def hamming_radius(min_similarity: float, bits: int = SKETCH_BITS, sigmas: float = 4.5) -> int:
    """The Hamming radius that keeps every row at cosine >= ``min_similarity`` (mean + ``sigmas`` sd)."""
    p = math.acos(max(-1.0, min(1.0, min_similarity))) / math.pi
    return min(bits, math.ceil(bits * p + sigmas * math.sqrt(bits * max(p * (1 - p), 1e-4))))


@dataclass
class _Partition:
    dim: int
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    expires: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    sketch: np.ndarray = field(default_factory=lambda: np.zeros((_WORDS, 0), dtype=np.uint64))
    size: int = 0

    def reserve(self, extra: int) -> None:
        need = self.size + extra
        if need <= len(self.ids):
            return
        capacity = max(64, need, 2 * len(self.ids))
        ids = np.zeros(capacity, dtype=np.int64)
        expires = np.zeros(capacity, dtype=np.float64)
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        sketch = np.zeros((_WORDS, capacity), dtype=np.uint64)
        ids[: self.size] = self.ids[: self.size]
        expires[: self.size] = self.expires[: self.size]
        if self.size:
            vectors[: self.size] = self.vectors[: self.size]
            sketch[:, : self.size] = self.sketch[:, : self.size]
        self.ids, self.expires, self.vectors, self.sketch = ids, expires, vectors, sketch


class VectorIndex:
    """Unit vectors keyed by integer ids, partitioned by scope key; see the module docstring."""

    def __init__(self, dim: int | None = None, *, exact_limit: int = 8192, seed: int = 0) -> None:
        self.dim = dim
        self.exact_limit = exact_limit
        self._seed = seed
        self._rotation: np.ndarray | None = None
        self._parts: dict[str, _Partition] = {}
        self._where: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._where)

    def clear(self) -> None:
        self._parts.clear()
        self._where.clear()

    def _sketch(self, vectors: np.ndarray) -> np.ndarray:
        """(words, n) uint64 sign bits of the rotated vectors."""
        if self._rotation is None:
            assert self.dim is not None
            rng = np.random.default_rng(self._seed)
            gaussian = rng.standard_normal((self.dim, SKETCH_BITS))
            self._rotation = gaussian.astype(np.float32)
        bits = np.packbits((vectors @ self._rotation) > 0, axis=1)
        return np.ascontiguousarray(bits.view(np.uint64).T)

    def add(self, scope_key: str, ids: Sequence[int], vectors: np.ndarray, expires: Sequence[float | None]) -> None:
        """Add rows (ids already present are left alone); ``expires`` is a POSIX time or ``None`` (never)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {vectors.shape}")
        keep = [i for i, entry_id in enumerate(ids) if int(entry_id) not in self._where]
        if not keep:
            return
        part = self._parts.get(scope_key)
        if part is None:
            part = self._parts[scope_key] = _Partition(self.dim)
        part.reserve(len(keep))
        start, stop = part.size, part.size + len(keep)
        part.ids[start:stop] = [int(ids[i]) for i in keep]
        part.expires[start:stop] = [math.inf if expires[i] is None else float(expires[i]) for i in keep]  # type: ignore[arg-type]
        part.vectors[start:stop] = vectors[keep]
        part.sketch[:, start:stop] = self._sketch(vectors[keep])
        part.size = stop
        for i in keep:
            self._where[int(ids[i])] = scope_key

    def remove(self, ids: Sequence[int]) -> None:
        """Drop rows by id (unknown ids are ignored)."""
        by_scope: dict[str, set[int]] = {}
        for entry_id in ids:
            scope_key = self._where.pop(int(entry_id), None)
            if scope_key is not None:
                by_scope.setdefault(scope_key, set()).add(int(entry_id))
        for scope_key, gone in by_scope.items():
            part = self._parts[scope_key]
            live = ~np.isin(part.ids[: part.size], np.fromiter(gone, dtype=np.int64))
            n = int(live.sum())
            part.ids[:n] = part.ids[: part.size][live]
            part.expires[:n] = part.expires[: part.size][live]
            part.vectors[:n] = part.vectors[: part.size][live]
            part.sketch[:, :n] = part.sketch[:, : part.size][:, live]
            part.size = n
            if n == 0:
                del self._parts[scope_key]

    def search(
        self, scope_key: str, query: np.ndarray, *, k: int, min_similarity: float, now: float
    ) -> list[tuple[int, float]]:
        """Up to ``k`` ``(id, cosine)`` of unexpired rows of one scope with cosine >= ``min_similarity``."""
        part = self._parts.get(scope_key)
        if part is None or part.size == 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        n = part.size
        if n <= self.exact_limit:
            rows = np.arange(n)
        else:
            rows = self._near(part, query, min_similarity)
            if len(rows) == 0:
                return []
        scores = part.vectors[rows] @ query if len(rows) < n else part.vectors[:n] @ query
        keep = (scores >= min_similarity) & (part.expires[rows] > now)
        rows, scores = rows[keep], scores[keep]
        if len(rows) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            rows, scores = rows[top], scores[top]
        order = np.argsort(-scores, kind="stable")
        return [(int(part.ids[rows[i]]), float(min(1.0, scores[i]))) for i in order]

    def _near(self, part: _Partition, query: np.ndarray, min_similarity: float) -> np.ndarray:
        """Rows whose sketch lies within the Hamming radius of ``min_similarity``."""
        q = self._sketch(query[None, :])[:, 0]
        n = part.size
        distance = np.zeros(n, dtype=np.uint16)
        scratch = np.empty(n, dtype=np.uint64)
        for w in range(_WORDS):
            np.bitwise_xor(part.sketch[w, :n], q[w], out=scratch)
            distance += _popcount(scratch)
        return np.flatnonzero(distance <= hamming_radius(min_similarity))
