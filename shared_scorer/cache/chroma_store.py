"""The shared store: a Chroma server, so that every replica of an app sees one cache.

Start a server with ``chroma run --host 127.0.0.1 --port 8000 --path DIR`` (package ``chromadb``). Each
tenant gets its own collection (``<prefix>-<sha256(tenant)[:24]>``, cosine space), and every query is
filtered on the entry's scope key (tenant, user and fingerprint) with a Chroma ``where`` clause, so a
lookup never sees another tenant's collection nor another user's or conversation's entries. Vectors are
sent by the cache (Chroma's own embedding function is never used). ``chromadb`` is imported when the
store is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import numpy as np

from shared_scorer.cache.store import Entry
from shared_scorer.errors import ConfigurationError

NEVER = 9.0e15
"""``expires_at`` stored for entries without a TTL (Chroma metadata has no null)."""


def _meta(entry: Entry, last_used: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "scope_key": entry.scope_key, "tenant": entry.tenant, "user": entry.user, "fingerprint": entry.fingerprint,
        "strategy_id": entry.strategy_id, "query": entry.query, "query_hash": entry.query_hash,
        "model": entry.model, "cost_usd": str(entry.cost_usd), "created_at": entry.created_at,
        "expires_at": NEVER if entry.expires_at is None else entry.expires_at, "last_used": last_used,
    }  # fmt: skip
    if entry.score is not None:
        meta["score"] = float(entry.score)
    meta["confirmed"], meta["wrong"] = entry.confirmed, entry.wrong
    for name in ("wrong_score", "last_score"):
        if getattr(entry, name) is not None:
            meta[name] = float(getattr(entry, name))
    return meta


def _entry(entry_id: str, answer: str, meta: dict[str, Any]) -> Entry:
    expires = float(meta["expires_at"])
    return Entry(
        id=entry_id, scope_key=meta["scope_key"], tenant=meta["tenant"], user=meta["user"],
        fingerprint=meta["fingerprint"], strategy_id=meta["strategy_id"], query=meta["query"],
        query_hash=meta["query_hash"], answer=answer, model=meta["model"], score=meta.get("score"),
        cost_usd=Decimal(meta["cost_usd"]), created_at=float(meta["created_at"]),
        expires_at=None if expires >= NEVER else expires, confirmed=int(meta.get("confirmed", 0)),
        wrong=int(meta.get("wrong", 0)), wrong_score=meta.get("wrong_score"), last_score=meta.get("last_score"),
    )  # fmt: skip


class ChromaStore:
    """Cache entries in a Chroma server (one collection per tenant, scope-key metadata filters).

    >>> store = ChromaStore(host="127.0.0.1", port=8000)  # doctest: +SKIP
    >>> cache = AnswerCache(store, embedder=...)  # doctest: +SKIP
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8000, *, prefix: str = "frugal-cache", client: Any = None
    ) -> None:
        if client is None:
            try:
                import chromadb
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ConfigurationError("ChromaStore needs the package 'chromadb' (pip install chromadb)") from exc
            client = chromadb.HttpClient(host=host, port=port)
        self.client = client
        self.prefix = prefix
        self._collections: dict[str, Any] = {}
        self._entry_tenant: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ChromaStore(prefix={self.prefix!r})"

    def _name(self, tenant: str) -> str:
        return f"{self.prefix}-{hashlib.sha256(tenant.encode()).hexdigest()[:24]}"

    def _collection(self, tenant: str, *, create: bool) -> Any:
        name = self._name(tenant)
        if name not in self._collections:
            if create:
                collection = self.client.get_or_create_collection(
                    name, metadata={"hnsw:space": "cosine", "tenant": tenant}, embedding_function=None
                )
            else:
                try:
                    collection = self.client.get_collection(name, embedding_function=None)
                except Exception:  # chromadb raises NotFoundError / ValueError by version
                    return None
            self._collections[name] = collection
        return self._collections[name]

    def _all(self) -> list[Any]:
        out = []
        for item in self.client.list_collections():
            name = item if isinstance(item, str) else item.name
            if name.startswith(self.prefix + "-"):
                out.append(self._collections.get(name) or self.client.get_collection(name, embedding_function=None))
        return out

    # ------------------------------------------------------------------ writes

    def add(self, entry: Entry, vector: np.ndarray | None) -> None:
        if vector is None:
            raise ConfigurationError("ChromaStore stores vectors: use it with a semantic AnswerCache")
        collection = self._collection(entry.tenant, create=True)
        collection.add(
            ids=[entry.id],
            embeddings=[np.asarray(vector, dtype=np.float32).reshape(-1).tolist()],
            documents=[entry.answer],
            metadatas=[_meta(entry, entry.created_at)],
        )
        self._entry_tenant[entry.id] = entry.tenant

    def touch(self, entry_id: str, now: float, score: float | None = None) -> None:
        tenant = self._entry_tenant.get(entry_id)
        collection = None if tenant is None else self._collection(tenant, create=False)
        if collection is not None:
            meta: dict[str, Any] = {"last_used": now}
            if score is not None:
                meta["last_score"] = float(score)
            collection.update(ids=[entry_id], metadatas=[meta])

    def get_entry(self, entry_id: str, *, tenant: str, user: str, scope_key: str | None = None) -> Entry | None:
        collection = self._collection(tenant, create=False)
        if collection is None:
            return None
        clauses: list[dict[str, Any]] = [{"tenant": tenant}, {"user": user}]
        if scope_key is not None:
            clauses.append({"scope_key": scope_key})
        got = collection.get(ids=[entry_id], where=_where(clauses), include=["metadatas", "documents"])
        if not got["ids"]:
            return None
        self._entry_tenant[entry_id] = tenant
        return _entry(got["ids"][0], got["documents"][0], dict(got["metadatas"][0]))

    def record_feedback(
        self, entry_id: str, *, tenant: str, user: str, scope_key: str | None = None, correct: bool
    ) -> Entry | None:
        """Read, count, write back (Chroma has no transactions: two replicas giving feedback on one entry
        at the same instant may lose one count; a wrong mark is never lost to a confirmation, as a wrong
        mark writes ``wrong_score``, which only grows)."""
        entry = self.get_entry(entry_id, tenant=tenant, user=user, scope_key=scope_key)
        if entry is None:
            return None
        if correct:
            meta: dict[str, Any] = {"confirmed": entry.confirmed + 1}
        else:
            score = 2.0 if entry.last_score is None else entry.last_score
            meta = {"wrong": entry.wrong + 1, "wrong_score": max(score, entry.wrong_score or -1e300)}
        collection = self._collection(tenant, create=False)
        collection.update(ids=[entry_id], metadatas=[meta])
        return replace(entry, **meta)

    def delete(
        self,
        *,
        tenant: str | None = None,
        user: str | None = None,
        scope_key: str | None = None,
        strategy_id: str | None = None,
        entry_ids: Sequence[str] | None = None,
    ) -> int:
        # every given field is matched exactly: "" is a real user (or key), never "any"; None means not filtered
        fields = (("user", user), ("scope_key", scope_key), ("strategy_id", strategy_id))
        clauses = [{k: v} for k, v in fields if v is not None]
        if entry_ids is not None and not entry_ids:
            return 0  # no ids: nothing to delete (Chroma refuses an empty id list)
        where = _where(clauses)
        collections = [self._collection(tenant, create=False)] if tenant is not None else self._all()
        removed = 0
        for collection in collections:
            if collection is None:
                continue
            ids = collection.get(ids=list(entry_ids) if entry_ids is not None else None, where=where, include=[])["ids"]
            if ids:
                collection.delete(ids=ids)
                removed += len(ids)
        return removed

    def purge_expired(self, now: float) -> int:
        removed = 0
        for collection in self._all():
            ids = collection.get(where={"expires_at": {"$lte": now}}, include=[])["ids"]
            if ids:
                collection.delete(ids=ids)
                removed += len(ids)
        return removed

    def evict(self, max_entries: int) -> int:
        rows: list[tuple[float, str, Any]] = []
        collections = self._all()
        if sum(c.count() for c in collections) <= max_entries:
            return 0
        for collection in collections:
            got = collection.get(include=["metadatas"])
            rows.extend(
                (float(m["last_used"]), i, collection) for i, m in zip(got["ids"], got["metadatas"], strict=True)
            )
        rows.sort(key=lambda r: (r[0], r[1]))
        doomed = rows[: max(0, len(rows) - max_entries)]
        for collection in {id(c): c for _, _, c in doomed}.values():
            collection.delete(ids=[i for _, i, c in doomed if c is collection])
        return len(doomed)

    # ------------------------------------------------------------------ reads

    def count(self) -> int:
        return sum(c.count() for c in self._all())

    def _scoped(self, tenant: str) -> list[Any]:
        collection = self._collection(tenant, create=False)
        return [] if collection is None else [collection]

    def get_exact(self, scope_key: str, query_hash: str, now: float, *, tenant: str) -> Entry | None:
        where = _where([{"scope_key": scope_key}, {"query_hash": query_hash}, {"expires_at": {"$gt": now}}])
        best: Entry | None = None
        for collection in self._scoped(tenant):
            got = collection.get(where=where, include=["metadatas", "documents"])
            for i, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                entry = _entry(i, doc, dict(meta))
                if best is None or entry.created_at > best.created_at:
                    best = entry
        if best is not None:
            self._entry_tenant[best.id] = best.tenant
        return best

    def search(
        self, scope_key: str, vector: np.ndarray, *, tenant: str, k: int, min_similarity: float, now: float
    ) -> list[tuple[Entry, float]]:
        where = _where([{"scope_key": scope_key}, {"expires_at": {"$gt": now}}])
        found: list[tuple[Entry, float]] = []
        query = [np.asarray(vector, dtype=np.float32).reshape(-1).tolist()]
        for collection in self._scoped(tenant):
            got = collection.query(
                query_embeddings=query, n_results=k, where=where, include=["metadatas", "documents", "distances"]
            )
            for i, doc, meta, distance in zip(
                got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0], strict=True
            ):
                similarity = 1.0 - float(distance)
                if similarity >= min_similarity:
                    found.append((_entry(i, doc, dict(meta)), min(1.0, similarity)))
        found.sort(key=lambda pair: -pair[1])
        for entry, _ in found:
            self._entry_tenant[entry.id] = entry.tenant
        return found[:k]

    def close(self) -> None:
        self._collections.clear()


def _where(clauses: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
