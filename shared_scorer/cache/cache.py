"""``AnswerCache``: the cascade's answer cache, exact first, then semantic confirmed by a verifier.

A lookup never leaves its scope: the store is asked only under the call's scope key (tenant, user and
the fingerprint of system prompt, earlier turns, tools, schema and strategy), and every entry it returns is
checked again against the call's tenant, user and fingerprint before it is served.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.cache.bound import EXACT_SCORE, EntryPolicy, OperatingPoint
from shared_scorer.cache.embedders import Embedder, RecentMemo, as_embedder
from shared_scorer.cache.guards import passes
from shared_scorer.cache.sqlite_store import SQLiteStore
from shared_scorer.cache.store import CacheStore, Entry, context_key, query_hash, scope_key
from shared_scorer.cache.verifier import ConservativeVerifier, ThresholdedVerifier, Verifier
from shared_scorer.context import CallContext, Scope
from shared_scorer.errors import ConfigurationError
from shared_scorer.protocols import CacheHit


class AnswerCache:
    """Answers the cascade accepted, served again to the same question in the same scope at $0.

    ``store`` is a :class:`CacheStore` or a SQLite file path (default: a private in-memory SQLite).
    ``embedder`` is the local MiniLM by default, or any LangChain ``Embeddings`` / LlamaIndex
    ``BaseEmbedding``. ``verifier`` confirms semantic candidates: the default
    :class:`ConservativeVerifier` serves only near-verbatim rewordings; a trained one
    (:class:`FeatureVerifier` or :class:`PairVerifier`, from ``frugal train-cache-verifier``; a folder path
    is loaded) serves far more at a chosen wrong-hit rate.
    ``max_wrong_rate`` (e.g. 0.05) is an error bound instead of a threshold: the operating point comes from
    the verifier's validation curve, and each entry adapts to the feedback callers give on its hits
    (:meth:`feedback`; the exact rule is in :mod:`shared_scorer.cache.bound`). Whatever the verifier, a
    candidate a lexical guard rejects (other numbers, units, dates, negation, names or roles:
    :mod:`shared_scorer.cache.guards`) is never served.
    ``semantic=False`` keeps exact matches only (no embedder is ever loaded). ``ttl_s`` bounds an entry's
    age; ``max_entries`` evicts the least recently used; ``strategy_id`` tags entries so that
    :meth:`invalidate` can drop those of an old strategy.

    >>> from shared_scorer.cache import HashingEmbedder
    >>> from shared_scorer.context import CallContext, Scope
    >>> from decimal import Decimal
    >>> cache = AnswerCache(embedder=HashingEmbedder())
    >>> ctx = CallContext(Scope("acme", "ann"), fingerprint="fp")
    >>> cache.store("Who wrote Emma?", "Jane Austen", ctx, model="small", score=0.9, cost_usd=Decimal("0.002"))
    >>> hit = cache.lookup("who wrote emma", ctx)
    >>> hit.answer, hit.similarity, hit.saved_usd
    ('Jane Austen', 1.0, Decimal('0.002'))
    >>> cache.lookup("Who wrote Emma?", CallContext(Scope("acme", "bob"), fingerprint="fp")) is None
    True
    """

    def __init__(
        self,
        store: CacheStore | str | Path | None = None,
        *,
        embedder: object | None = None,
        verifier: Verifier | str | Path | None = None,
        semantic: bool = True,
        ttl_s: float | None = None,
        max_entries: int | None = None,
        strategy_id: str = "",
        candidates: int = 4,
        clock: Callable[[], float] = time.time,
        max_wrong_rate: float | None = None,
        block_after: int = 2,
        loosen_factor: float = 2.0,
    ) -> None:
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigurationError(f"ttl_s must be > 0, got {ttl_s}")
        if max_entries is not None and max_entries < 1:
            raise ConfigurationError(f"max_entries must be >= 1, got {max_entries}")
        if candidates < 1:
            raise ConfigurationError(f"candidates must be >= 1, got {candidates}")
        if max_wrong_rate is not None and not 0.0 < max_wrong_rate < 1.0:
            raise ConfigurationError(f"max_wrong_rate must be in (0, 1), got {max_wrong_rate}")
        if block_after < 1 or loosen_factor < 1.0:
            raise ConfigurationError(
                f"block_after must be >= 1 and loosen_factor >= 1, got {block_after} and {loosen_factor}"
            )
        if store is None or isinstance(store, str | Path):
            store = SQLiteStore(store if store is not None else ":memory:")
        self.backend: CacheStore = store
        self.embedder: Embedder | None = RecentMemo(as_embedder(embedder)) if semantic else None
        if isinstance(verifier, str | Path):
            from shared_scorer.cache.stacked import load_verifier

            self.verifier: Verifier = load_verifier(verifier)
        else:
            self.verifier = ConservativeVerifier() if verifier is None else verifier
        if self.embedder is not None and hasattr(self.verifier, "use_embedder"):
            self.verifier.use_embedder(self.embedder)
        self.semantic = semantic
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.strategy_id = strategy_id
        self.candidates = candidates
        self.clock = clock
        self.max_wrong_rate = max_wrong_rate
        loose = None
        if max_wrong_rate is not None and isinstance(self.verifier, ThresholdedVerifier):
            loose = _point(self.verifier, min(0.5, loosen_factor * max_wrong_rate))
        self.policy = EntryPolicy(
            _point(self.verifier, max_wrong_rate), loose=loose, max_wrong_rate=max_wrong_rate,
            block_after=block_after,
        )  # fmt: skip

    def __repr__(self) -> str:
        bound = "" if self.max_wrong_rate is None else f", max_wrong_rate={self.max_wrong_rate}"
        return f"AnswerCache(store={self.backend!r}, verifier={self.verifier!r}, semantic={self.semantic}{bound})"

    @property
    def operating_point(self) -> OperatingPoint:
        """The global cosine floor and verifier threshold (entries adapt from it, see :meth:`feedback`)."""
        return self.policy.point

    # ------------------------------------------------------------------ the hook

    def lookup(self, query: str, context: CallContext) -> CacheHit | None:
        """The cached answer for ``query`` in ``context``'s scope, or ``None``: exact match first, then the
        nearest entries by cosine, the first one the verifier confirms."""
        now = self.clock()
        key = context_key(context)
        exact = self.backend.get_exact(key, query_hash(query), now, tenant=context.scope.tenant)
        if exact is not None and exact.matches(context) and exact.live(now) and self.policy.exact_allowed(exact):
            return self._hit(exact, 1.0, now, EXACT_SCORE)
        if self.embedder is None or self.policy.search_floor > 1.0:
            return None
        vector = self.embedder.embed([query])[0]
        found = self.backend.search(
            key,
            vector,
            tenant=context.scope.tenant,
            k=self.candidates,
            min_similarity=self.policy.search_floor,
            now=now,
        )
        # scope, age, the entry's own point, then the lexical guards: all before any verifier runs
        points = [(e, s, self.policy.for_entry(e)) for e, s in found if e.matches(context) and e.live(now)]
        kept = [(e, s, p) for e, s, p in points if p is not None and s >= p.min_similarity and passes(query, e.query)]
        if not kept:
            return None
        scores = self.scores(query, [e.query for e, _, _ in kept], [s for _, s, _ in kept])
        for (entry, similarity, point), score in zip(kept, scores, strict=True):
            if score >= point.threshold:
                return self._hit(entry, similarity, now, float(score))
        return None

    def scores(self, query: str, cached: list[str], similarities: list[float]) -> list[float]:
        """The verifier's score of each candidate, compared with the operating point's threshold: P(same
        question) for a trained verifier, the cosine (``-inf`` when its lexical check fails) for the
        conservative one, 1.0 or ``-inf`` for any other verifier's ``confirm``."""
        if isinstance(self.verifier, ThresholdedVerifier):
            return [float(p) for p in self.verifier.probabilities(cached, [query] * len(cached))]
        if isinstance(self.verifier, ConservativeVerifier):
            return [float(x) for x in self.verifier.scores([query] * len(cached), cached, similarities)]
        return [1.0 if ok else -math.inf for ok in self.verifier.confirm(query, cached, similarities)]

    def _hit(self, entry: Entry, similarity: float, now: float, score: float) -> CacheHit:
        self.backend.touch(entry.id, now, score)
        return CacheHit(
            entry_id=entry.id,
            answer=entry.answer,
            similarity=round(float(similarity), 6),
            model=entry.model,
            saved_usd=entry.cost_usd,
        )

    def store(
        self,
        query: str,
        answer: str,
        context: CallContext,
        *,
        model: str,
        score: float | None,
        cost_usd: Decimal,
    ) -> None:
        """Keep an answer the cascade accepted (the cascade never stores rejected or tool-call answers)."""
        now = self.clock()
        entry = Entry(
            id=uuid.uuid4().hex,
            scope_key=context_key(context),
            tenant=context.cache_scope.tenant,
            user=context.cache_scope.user,  # the tenant-wide user when the tenant shares its cache
            fingerprint=context.fingerprint,
            strategy_id=context.strategy or self.strategy_id,
            query=query,
            query_hash=query_hash(query),
            answer=answer,
            model=model,
            score=None if score is None else float(score),
            cost_usd=Decimal(cost_usd),
            created_at=now,
            expires_at=None if self.ttl_s is None else now + self.ttl_s,
        )
        vector: np.ndarray | None = None
        if self.embedder is not None:
            vector = self.embedder.embed([query])[0]
        self.backend.add(entry, vector)
        if self.ttl_s is not None:
            self.backend.purge_expired(now)
        if self.max_entries is not None:
            self.backend.evict(self.max_entries)

    # ------------------------------------------------------------------ feedback

    def feedback(self, hit: CacheHit | str, correct: bool, context: CallContext | Scope) -> dict[str, Any] | None:
        """Say whether a served hit was right: ``hit`` is the :class:`CacheHit` (or its ``entry_id``, as in
        an adapter's trail: ``cache_hit.entry_id``), ``context`` the call's context or just its
        :class:`Scope` (tenant and user: what an adapter's caller knows; the entry id names the rest).

        A wrong hit tightens that entry (it serves only candidates scoring above the score of its last
        hit; after ``block_after`` wrong marks, no semantic hit; a wrong exact hit: nothing); confirmed hits
        may loosen it within ``max_wrong_rate`` (rule: :mod:`shared_scorer.cache.bound`). The counts
        persist in the store. Returns the entry's new state (:meth:`entry_state`), or ``None`` when no
        entry of that id lives in ``context``'s scope: feedback from another scope changes nothing.
        """
        entry_id = hit if isinstance(hit, str) else hit.entry_id
        scope, key = _scope_of(context)
        entry = self.backend.record_feedback(
            entry_id, tenant=scope.tenant, user=scope.user, scope_key=key, correct=bool(correct)
        )
        if entry is None or (entry.tenant, entry.user) != (scope.tenant, scope.user):
            return None
        return self.policy.state(entry)

    async def afeedback(
        self, hit: CacheHit | str, correct: bool, context: CallContext | Scope
    ) -> dict[str, Any] | None:
        """:meth:`feedback` off the event loop."""
        return await asyncio.to_thread(self.feedback, hit, correct, context)

    def entry_state(self, entry_id: str, context: CallContext | Scope) -> dict[str, Any] | None:
        """An entry's feedback counts and its own operating point (``None`` outside that scope)."""
        scope, key = _scope_of(context)
        entry = self.backend.get_entry(entry_id, tenant=scope.tenant, user=scope.user, scope_key=key)
        if entry is None or (entry.tenant, entry.user) != (scope.tenant, scope.user):
            return None
        return self.policy.state(entry)

    async def alookup(self, query: str, context: CallContext) -> CacheHit | None:
        """:meth:`lookup` off the event loop (embedding and SQLite are blocking)."""
        return await asyncio.to_thread(self.lookup, query, context)

    async def astore(
        self, query: str, answer: str, context: CallContext, *, model: str, score: float | None, cost_usd: Decimal
    ) -> None:
        """:meth:`store` off the event loop."""
        await asyncio.to_thread(self.store, query, answer, context, model=model, score=score, cost_usd=cost_usd)

    # ------------------------------------------------------------------ maintenance

    def invalidate(self, *, strategy_id: str) -> int:
        """Drop every entry written under ``strategy_id``; return how many."""
        return self.backend.delete(strategy_id=strategy_id)

    def set_strategy(self, strategy_id: str) -> int:
        """Tag new entries with ``strategy_id`` and drop those of the previous strategy (if it differs)."""
        old, self.strategy_id = self.strategy_id, strategy_id
        return 0 if old == strategy_id else self.invalidate(strategy_id=old)

    def clear(self, scope: Scope | None = None, *, tenant: str | None = None, fingerprint: str | None = None) -> int:
        """Drop entries: of one ``scope`` (tenant and user; with ``fingerprint``, only that conversation
        context), of one ``tenant``, or all of them when nothing is given. Returns how many."""
        if scope is not None and fingerprint is not None:
            return self.backend.delete(scope_key=scope_key(scope.tenant, scope.user, fingerprint))
        if scope is not None:
            return self.backend.delete(tenant=scope.tenant, user=scope.user)
        if fingerprint is not None:
            raise ConfigurationError("clear(fingerprint=...) needs the scope too")
        return self.backend.delete(tenant=tenant)

    def purge(self) -> int:
        """Delete expired entries now (they are never served either way); return how many."""
        return self.backend.purge_expired(self.clock())

    def __len__(self) -> int:
        return self.backend.count()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _scope_of(context: CallContext | Scope) -> tuple[Scope, str | None]:
    """The scope, and the scope key when the whole call context is known."""
    if isinstance(context, Scope):
        return context, None
    return context.cache_scope, context_key(context)


def _point(verifier: Verifier, max_wrong_rate: float | None) -> OperatingPoint:
    """The global operating point: from the verifier's validation curve when a bound is given, else the
    verifier's own saved point. The conservative verifier has one fixed point; it is kept when the bound is
    at least its measured wrong-hit share, otherwise semantic hits are off (exact matches only)."""
    if isinstance(verifier, ThresholdedVerifier):
        if max_wrong_rate is None:
            return OperatingPoint(verifier.min_similarity, verifier.threshold)
        chosen = verifier.operating_point(max_wrong_rate)
        return OperatingPoint(chosen["min_similarity"], chosen["threshold"], chosen["wrong_hit_share"])
    if isinstance(verifier, ConservativeVerifier):
        point = OperatingPoint(verifier.min_similarity, verifier.min_similarity, verifier.estimated_wrong_share)
        if max_wrong_rate is not None and max_wrong_rate < verifier.estimated_wrong_share:
            return OperatingPoint(math.inf, math.inf, 0.0)
        return point
    if max_wrong_rate is not None:
        raise ConfigurationError(
            f"{verifier!r} has no validation curve: max_wrong_rate needs a trained verifier "
            "(frugal train-cache-verifier) or the default ConservativeVerifier"
        )
    return OperatingPoint(verifier.min_similarity, 1.0)
