"""What an answer-cache store keeps (:class:`Entry`) and the calls :class:`AnswerCache` makes to it.

A store never decides what is a hit: it returns exact matches and nearest neighbours *within one scope
key*; the cache confirms them. The scope key digests tenant, user and fingerprint, and every entry also
carries those three in clear, so the cache checks them again before serving anything. The keys live here
too: :func:`scope_key` and the exact-match form of a query (:func:`normalise_query`, :func:`query_hash`).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, runtime_checkable

import numpy as np

from shared_scorer.context import CallContext

_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?.!\u3002]+$")  # after NFKC, full-width ?! are ASCII


def normalise_query(text: str) -> str:
    """The exact-match form of a query: NFKC, case-folded, whitespace collapsed, closing ``?.!`` dropped.

    >>> normalise_query("  What is  the CAPITAL of France ?? ")
    'what is the capital of france'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _TRAILING.sub("", _SPACE.sub(" ", text).strip())


def query_hash(text: str) -> str:
    """SHA-256 of :func:`normalise_query`."""
    return hashlib.sha256(normalise_query(text).encode()).hexdigest()


def scope_key(tenant: str, user: str, fingerprint: str) -> str:
    """The SHA-256 of ``[tenant, user, fingerprint]``: the only key entries are looked up under."""
    return hashlib.sha256(json.dumps([tenant, user, fingerprint]).encode()).hexdigest()


def context_key(context: CallContext) -> str:
    """:func:`scope_key` of a call's context."""
    return scope_key(context.cache_scope.tenant, context.cache_scope.user, context.fingerprint)


@dataclass(frozen=True)
class Entry:
    """One cached answer."""

    id: str
    scope_key: str
    tenant: str
    user: str
    fingerprint: str
    strategy_id: str
    query: str
    query_hash: str
    """SHA-256 of the normalised query (the exact-match key)."""
    answer: str
    model: str
    score: float | None
    cost_usd: Decimal
    created_at: float
    expires_at: float | None
    """POSIX time after which the entry is never served; ``None``: no TTL."""
    confirmed: int = 0
    """Hits of this entry the caller confirmed (:meth:`AnswerCache.feedback`)."""
    wrong: int = 0
    """Hits of this entry the caller marked wrong."""
    wrong_score: float | None = None
    """The highest verifier score at which a hit of this entry was marked wrong (``None``: never); the
    entry then serves only candidates scoring strictly above it (2.0: an exact hit was wrong, never serve)."""
    last_score: float | None = None
    """The verifier score of this entry's last hit (2.0 for an exact hit)."""

    def matches(self, context: CallContext) -> bool:
        """Whether this entry belongs to exactly the scope and fingerprint of ``context``."""
        return (
            self.tenant == context.cache_scope.tenant
            and self.user == context.cache_scope.user
            and self.fingerprint == context.fingerprint
            and self.scope_key == context_key(context)
        )

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@runtime_checkable
class CacheStore(Protocol):
    """Where entries live: :class:`~shared_scorer.cache.SQLiteStore` (embedded) or
    :class:`~shared_scorer.cache.ChromaStore` (shared server)."""

    def add(self, entry: Entry, vector: np.ndarray | None) -> None:
        """Insert one entry (its vector is ``None`` when the cache is exact-only)."""
        ...

    def get_exact(self, scope_key: str, query_hash: str, now: float, *, tenant: str) -> Entry | None:
        """The newest live entry of ``scope_key`` whose normalised query hashes to ``query_hash``
        (``tenant`` is the scope's tenant, for stores that partition by it)."""
        ...

    def search(
        self, scope_key: str, vector: np.ndarray, *, tenant: str, k: int, min_similarity: float, now: float
    ) -> list[tuple[Entry, float]]:
        """Up to ``k`` live entries of ``scope_key`` with cosine >= ``min_similarity``, best first."""
        ...

    def touch(self, entry_id: str, now: float, score: float | None = None) -> None:
        """Record a hit (for least-recently-used eviction) and the verifier ``score`` it was served at."""
        ...

    def get_entry(self, entry_id: str, *, tenant: str, user: str, scope_key: str | None = None) -> Entry | None:
        """Entry ``entry_id`` if it belongs to ``tenant`` and ``user`` (and, if given, ``scope_key``); else
        ``None``, as if it did not exist."""
        ...

    def record_feedback(
        self, entry_id: str, *, tenant: str, user: str, scope_key: str | None = None, correct: bool
    ) -> Entry | None:
        """Count one confirmed (``correct``) or wrong hit on entry ``entry_id`` of that tenant and user (and
        ``scope_key``, if given); a wrong one also raises ``wrong_score`` to the entry's ``last_score``.
        Returns the updated entry, or ``None`` when no such entry lives in that scope (nothing changes)."""
        ...

    def delete(
        self,
        *,
        tenant: str | None = None,
        user: str | None = None,
        scope_key: str | None = None,
        strategy_id: str | None = None,
        entry_ids: Sequence[str] | None = None,
    ) -> int:
        """Delete the entries matching every given filter (all entries if none); return how many."""
        ...

    def purge_expired(self, now: float) -> int:
        """Delete expired entries; return how many."""
        ...

    def evict(self, max_entries: int) -> int:
        """Delete least recently used entries until at most ``max_entries`` remain; return how many."""
        ...

    def count(self) -> int:
        """How many entries are stored (expired ones included until purged)."""
        ...

    def close(self) -> None: ...
