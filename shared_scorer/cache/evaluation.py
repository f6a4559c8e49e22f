"""``frugal cache-bench``: how many duplicates the cache serves, how many of its hits are wrong, how fast.

Quality: every pair's ``cached`` question is stored in a fresh cache (its own scope of one shared
in-memory store, which is the same thing: lookups never cross scopes) and its ``incoming`` question is
looked up through :meth:`AnswerCache.lookup`, the production path. Embeddings are computed once in a batch
beforehand (timed apart). Latency: the embedded SQLite store filled with 10,000 and 100,000 entries in one
scope (the worst case: nothing is filtered out by scope), timed per lookup without the embedding and the
verifier, which are timed apart.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.cache.cache import AnswerCache
from shared_scorer.cache.embedders import Embedder, as_embedder
from shared_scorer.cache.pairs import Pair, hit_figures, pr_curve
from shared_scorer.cache.sqlite_store import SQLiteStore
from shared_scorer.cache.store import Entry, query_hash, scope_key
from shared_scorer.cache.verifier import ConservativeVerifier, ThresholdedVerifier, guarded
from shared_scorer.context import CallContext, Scope
from shared_scorer.errors import DataError

CURVE_FLOOR = 0.6
"""The lowest cosine floor :func:`~shared_scorer.cache.verifier.choose_operating_point` considers."""


class MemoEmbedder:
    """Serves vectors computed beforehand (falls back to the wrapped embedder for unknown texts)."""

    def __init__(self, inner: Embedder, texts: Sequence[str], vectors: str | Path | None = None) -> None:
        self.inner = inner
        self.table: dict[str, np.ndarray] = {}
        if vectors is not None:
            self.table.update(load_vectors(vectors))
        unique = [t for t in dict.fromkeys(texts) if t not in self.table]
        started = time.perf_counter()
        computed = inner.embed(unique) if unique else np.zeros((0, 1), np.float32)
        self.seconds = time.perf_counter() - started
        self.computed = len(unique)
        self.table.update({t: computed[i] for i, t in enumerate(unique)})

    def __repr__(self) -> str:
        return repr(self.inner)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.table]
        if missing:
            for t, v in zip(missing, self.inner.embed(missing), strict=True):
                self.table[t] = v
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)


def load_vectors(path: str | Path) -> dict[str, np.ndarray]:
    """Precomputed embeddings: an ``.npz`` with ``texts`` (strings) and ``vectors`` (one row each)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            texts, vectors = data["texts"], data["vectors"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not an .npz of texts and vectors ({exc})") from None
    if len(texts) != len(vectors):
        raise DataError(f"{path}: {len(texts)} texts but {len(vectors)} vectors")
    return {str(t): np.asarray(v, dtype=np.float32) for t, v in zip(texts, vectors, strict=True)}


def _ms(samples: Sequence[float]) -> dict[str, float]:
    values = np.asarray(samples, dtype=float) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3)}


def quality(
    pairs: Sequence[Pair], embedder: MemoEmbedder, verifier: Any, max_wrong_rate: float | None = None
) -> dict[str, Any]:
    """Duplicate hit rate, wrong-hit share and precision-recall curve of one verifier on ``pairs`` (under
    the error bound ``max_wrong_rate``, if given), and the verifier's time per candidate."""
    cache = AnswerCache(embedder=embedder, verifier=verifier, max_wrong_rate=max_wrong_rate)
    store = cache.backend
    assert isinstance(store, SQLiteStore)
    contexts = [CallContext(Scope(f"pair-{i}", "bench"), "fp") for i in range(len(pairs))]
    store.add_many(
        [_entry(p.cached, c, i) for i, (p, c) in enumerate(zip(pairs, contexts, strict=True))],
        embedder.embed([p.cached for p in pairs]),
    )
    hits, times = np.zeros(len(pairs), dtype=bool), []
    for i, (pair, context) in enumerate(zip(pairs, contexts, strict=True)):
        started = time.perf_counter()
        hits[i] = cache.lookup(pair.incoming, context) is not None
        times.append(time.perf_counter() - started)
    duplicate = np.array([p.duplicate for p in pairs])
    a, b = embedder.embed([p.cached for p in pairs]), embedder.embed([p.incoming for p in pairs])
    sims = np.einsum("ij,ij->i", a, b)
    cached, incoming = [p.cached for p in pairs], [p.incoming for p in pairs]
    if isinstance(verifier, ThresholdedVerifier):  # the whole curve, not only above the verifier's own floor
        scores = np.where(sims >= CURVE_FLOOR, verifier.probabilities(cached, incoming), -np.inf)
    else:
        scores = verifier.scores(incoming, cached, sims)
    scores = guarded(scores, cached, incoming)
    exact = np.array([query_hash(p.cached) == query_hash(p.incoming) for p in pairs])
    scores[exact] = 2.0  # above any cosine or probability: exact matches are served first
    figures = hit_figures(hits, duplicate)
    point = cache.operating_point
    figures["max_wrong_rate"] = max_wrong_rate
    figures["operating_point"] = {
        "min_similarity": point.min_similarity, "threshold": point.threshold,
        "validation_wrong_hit_share": point.estimated_wrong_share,
    }  # fmt: skip
    figures["exact_hits"] = int(exact.sum())
    figures["lookup_with_verifier"] = _ms(times)
    per_candidate = []
    for pair, sim in list(zip(pairs, sims, strict=True))[:200]:
        started = time.perf_counter()
        cache.scores(pair.incoming, [pair.cached], [float(sim)])
        per_candidate.append(time.perf_counter() - started)
    figures["verifier_per_candidate"] = _ms(per_candidate)
    figures["precision_recall"] = pr_curve(scores, duplicate)
    cache.close()
    return figures


def _entry(query: str, context: CallContext, i: int, vector_free: bool = False) -> Entry:
    return Entry(
        id=f"e{i}", scope_key=scope_key(context.scope.tenant, context.scope.user, context.fingerprint),
        tenant=context.scope.tenant, user=context.scope.user, fingerprint=context.fingerprint, strategy_id="",
        query=query, query_hash=query_hash(query), answer=f"answer {i}", model="bench", score=None,
        cost_usd=Decimal("0.001"), created_at=time.time(), expires_at=None,
    )  # fmt: skip


def latency(
    base: np.ndarray, queries: np.ndarray, size: int, *, min_similarity: float, seed: int = 0, folder: Path
) -> dict[str, Any]:
    """Lookup latency of the SQLite store holding ``size`` entries in one scope (the pairs' cached
    questions, topped up with normalised mixtures of two of them), and the index's recall at 1 against
    exact search over the queries (the pairs' incoming questions) that have a neighbour above the floor."""
    rng = np.random.default_rng(seed)
    extra = max(0, size - len(base))
    mixed = base[rng.integers(0, len(base), extra)] + base[rng.integers(0, len(base), extra)]
    vectors = np.concatenate([base[:size], mixed / np.linalg.norm(mixed, axis=1, keepdims=True)]).astype(np.float32)
    store = SQLiteStore(folder / f"bench-{size}.sqlite")
    context = CallContext(Scope("bench", "bench"), "fp")
    key = scope_key("bench", "bench", "fp")
    started = time.perf_counter()
    for start in range(0, size, 20000):
        stop = min(size, start + 20000)
        store.add_many([_entry(f"q{i}", context, i) for i in range(start, stop)], vectors[start:stop])
    fill = time.perf_counter() - started
    started = time.perf_counter()
    store.search(key, queries[0], k=4, min_similarity=min_similarity, now=time.time())
    load = time.perf_counter() - started
    times, agree, relevant = [], 0, 0
    for q in queries:
        started = time.perf_counter()
        store.get_exact(key, "no-such-hash", time.time())
        found = store.search(key, q, k=4, min_similarity=min_similarity, now=time.time())
        times.append(time.perf_counter() - started)
        exact = vectors @ q
        best = int(np.argmax(exact))
        if exact[best] >= min_similarity:
            relevant += 1
            agree += bool(found) and found[0][0].id == f"e{best}"
    store.close()
    return {
        "entries": size,
        "lookup_without_embedding": _ms(times),
        "queries": len(queries),
        "fill_seconds": round(fill, 2),
        "index_load_seconds": round(load, 3),
        "index_recall_at_1": round(agree / relevant, 4) if relevant else None,
        "queries_with_a_neighbour": relevant,
    }


def run_bench(
    pairs: Sequence[Pair],
    *,
    verifier: Any = None,
    embedder: object | None = None,
    vectors: str | Path | None = None,
    sizes: Sequence[int] = (10_000, 100_000),
    latency_queries: int = 500,
    seed: int = 0,
    max_wrong_rate: float | None = None,
) -> dict[str, Any]:
    """The figures of ``frugal cache-bench`` as a JSON-ready dict.

    At the top level, for the trained verifier (the default one without): ``duplicate_hit_rate`` and
    ``wrong_hit_share`` under ``max_wrong_rate``, ``lookup_ms`` (p50/p99 per store size, embedding and
    verifier apart) and ``verifier_ms_per_candidate``."""
    inner = as_embedder(embedder)
    texts = [t for p in pairs for t in (p.cached, p.incoming)]
    memo = MemoEmbedder(inner, texts, vectors)
    single = []
    for text in texts[: min(100, len(texts))]:
        started = time.perf_counter()
        inner.embed([text])
        single.append(time.perf_counter() - started)
    verifiers: dict[str, Any] = {"conservative_default": ConservativeVerifier()}
    if verifier is not None:
        verifiers["trained_verifier"] = verifier
    result: dict[str, Any] = {
        "pairs": len(pairs),
        "embedder": repr(inner),
        "embedding": {
            "batch_seconds": round(memo.seconds, 2),
            "texts_embedded": memo.computed,
            "texts_precomputed": len(memo.table) - memo.computed,
            "single_query": _ms(single),
        },
    }
    for name, v in verifiers.items():
        started = time.perf_counter()
        result[name] = {"verifier": repr(v), **quality(pairs, memo, v, max_wrong_rate)}
        result[name]["seconds"] = round(time.perf_counter() - started, 1)
    main = result["trained_verifier" if verifier is not None else "conservative_default"]
    result.update(
        {
            "max_wrong_rate": max_wrong_rate,
            "verifier": main["verifier"],
            "duplicate_hit_rate": main["duplicate_hit_rate"],
            "wrong_hit_share": main["wrong_hit_share"],
            "hits": main["hits"],
            "wrong_hits": main["wrong_hits"],
            "duplicates": main["duplicates"],
            "verifier_ms_per_candidate": main["verifier_per_candidate"],
        }
    )
    duplicate = np.array([p.duplicate for p in pairs])
    a, b = memo.embed([p.cached for p in pairs]), memo.embed([p.incoming for p in pairs])
    sims = np.einsum("ij,ij->i", a, b)
    result["cosine_only"] = {f"{t:.2f}": hit_figures(sims >= t, duplicate) for t in (0.85, 0.9, 0.95, 0.98)}
    if sizes:
        base = np.stack([memo.table[t] for t in dict.fromkeys(p.cached for p in pairs)])
        rng = np.random.default_rng(seed)
        queries = b[rng.permutation(len(b))[:latency_queries]]
        floor = float(main["operating_point"]["min_similarity"])
        floor = floor if floor <= 1.0 else ConservativeVerifier().min_similarity
        with tempfile.TemporaryDirectory() as folder:
            result["latency"] = [
                latency(base, queries, n, min_similarity=floor, seed=seed, folder=Path(folder)) for n in sizes
            ]
        result["lookup_ms"] = {str(row["entries"]): row["lookup_without_embedding"] for row in result["latency"]}
    result["machine"] = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    return result
