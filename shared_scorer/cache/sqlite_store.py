"""The embedded store: one SQLite file (the truth) plus an in-process vector index (a copy).

SQLite runs in WAL mode with a busy timeout, and every write is one ``BEGIN IMMEDIATE`` transaction, so
several processes may write one file at once and a process killed mid-write leaves the last committed
state. Vectors are stored as float32 blobs. Each process keeps its own :class:`VectorIndex`; before a
search it asks SQLite whether anyone wrote (``PRAGMA data_version``), loads rows added since (row ids only
grow, ``AUTOINCREMENT``), and rebuilds from the file when another process deleted rows (a ``deletions``
counter in the ``meta`` table).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.cache.index import VectorIndex
from shared_scorer.cache.store import Entry
from shared_scorer.errors import ConfigurationError

SCHEMA_VERSION = 2
"""2: per-entry feedback (confirmed, wrong, wrong_score, last_score); a version-1 file is upgraded."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    scope_key TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    strategy_id TEXT NOT NULL,
    query TEXT NOT NULL,
    query_hash TEXT NOT NULL,
    answer TEXT NOT NULL,
    model TEXT NOT NULL,
    score REAL,
    cost_usd TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    vector BLOB,
    confirmed INTEGER NOT NULL DEFAULT 0,
    wrong INTEGER NOT NULL DEFAULT 0,
    wrong_score REAL,
    last_score REAL
);
CREATE INDEX IF NOT EXISTS entries_exact ON entries (scope_key, query_hash);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_used);
CREATE INDEX IF NOT EXISTS entries_tenant ON entries (tenant, user_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COLUMNS = (
    "id, scope_key, tenant, user_id, fingerprint, strategy_id, query, query_hash, answer, model, score, "
    "cost_usd, created_at, expires_at"
)
_READ = _COLUMNS + ", confirmed, wrong, wrong_score, last_score"
_FEEDBACK_COLUMNS = (("confirmed", "INTEGER NOT NULL DEFAULT 0"), ("wrong", "INTEGER NOT NULL DEFAULT 0"),
                     ("wrong_score", "REAL"), ("last_score", "REAL"))  # fmt: skip


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(
        id=row[0], scope_key=row[1], tenant=row[2], user=row[3], fingerprint=row[4], strategy_id=row[5],
        query=row[6], query_hash=row[7], answer=row[8], model=row[9], score=row[10],
        cost_usd=Decimal(row[11]), created_at=row[12], expires_at=row[13],
        confirmed=row[14], wrong=row[15], wrong_score=row[16], last_score=row[17],
    )  # fmt: skip


class SQLiteStore:
    """Cache entries in a SQLite file shared by any number of processes (``":memory:"``: private).

    >>> import numpy as np, tempfile, os
    >>> from shared_scorer.cache.store import Entry
    >>> from decimal import Decimal
    >>> store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "cache.sqlite"))
    >>> e = Entry("e1", "k", "t", "u", "fp", "", "q?", "h", "a", "m", 0.9, Decimal("0.01"), 0.0, None)
    >>> store.add(e, np.eye(4, dtype=np.float32)[0])
    >>> [(hit.id, sim) for hit, sim in store.search("k", np.eye(4, dtype=np.float32)[0], k=1,
    ...                                              min_similarity=0.9, now=1.0)]
    [('e1', 1.0)]
    """

    def __init__(self, path: str | Path = ":memory:", *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('deletions', 0)")
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
            if version == 1:  # add the feedback columns (entries keep their answers; counts start at 0)
                have = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
                for column, kind in _FEEDBACK_COLUMNS:
                    if column not in have:
                        conn.execute(f"ALTER TABLE entries ADD COLUMN {column} {kind}")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
                version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise ConfigurationError(f"{self.path}: cache schema version {version}, expected {SCHEMA_VERSION}")
        self._index = VectorIndex()
        self._max_rowid = 0
        self._generation: int | None = None
        self._data_version: int | None = None
        self._dirty = True

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (waits up to the busy timeout for other writers)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ writes

    def add(self, entry: Entry, vector: np.ndarray | None) -> None:
        self.add_many([entry], None if vector is None else [vector])

    def add_many(self, entries: Sequence[Entry], vectors: Sequence[np.ndarray] | np.ndarray | None) -> None:
        """Insert many entries in one transaction (``vectors``: one per entry, or ``None``)."""
        rows = []
        dim = self._stored_dim()
        for i, entry in enumerate(entries):
            blob = None
            if vectors is not None:
                vector = np.asarray(vectors[i], dtype=np.float32).reshape(-1)
                if dim is not None and len(vector) != dim:
                    raise ConfigurationError(
                        f"{self.path}: vector of dimension {len(vector)}, but the cache holds {dim}-"
                        "dimensional vectors (another embedder?); clear the cache or use another file"
                    )
                blob = vector.tobytes()
            rows.append(
                (
                    entry.id, entry.scope_key, entry.tenant, entry.user, entry.fingerprint, entry.strategy_id,
                    entry.query, entry.query_hash, entry.answer, entry.model, entry.score, str(entry.cost_usd),
                    entry.created_at, entry.expires_at, entry.created_at, blob,
                )
            )  # fmt: skip
        with self._write() as conn:
            conn.executemany(
                f"INSERT INTO entries ({_COLUMNS}, last_used, vector) VALUES ({', '.join('?' * 16)})", rows
            )
            self._dirty = True

    def _stored_dim(self) -> int | None:
        """The dimension of the vectors already in the file (``None`` while there are none)."""
        if self._index.dim is None:
            with self._lock:
                row = self._conn.execute(
                    "SELECT length(vector) FROM entries WHERE vector IS NOT NULL LIMIT 1"
                ).fetchone()
            if row is not None:
                self._index.dim = int(row[0]) // 4
        return self._index.dim

    def touch(self, entry_id: str, now: float, score: float | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE entries SET last_used = ?, hits = hits + 1, last_score = coalesce(?, last_score) WHERE id = ?",
                (now, score, entry_id),
            )

    def get_entry(self, entry_id: str, *, tenant: str, user: str, scope_key: str | None = None) -> Entry | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_READ} FROM entries WHERE id = ? AND tenant = ? AND user_id = ? "
                "AND (? IS NULL OR scope_key = ?)",
                (entry_id, tenant, user, scope_key, scope_key),
            ).fetchone()
        return None if row is None else _entry(row)

    def record_feedback(
        self, entry_id: str, *, tenant: str, user: str, scope_key: str | None = None, correct: bool
    ) -> Entry | None:
        """One transaction: the count and ``wrong_score`` change together, whatever other processes do."""
        if correct:
            update = "confirmed = confirmed + 1"
        else:
            update = "wrong = wrong + 1, wrong_score = max(coalesce(wrong_score, -1e300), coalesce(last_score, 2.0))"
        with self._write() as conn:
            row = conn.execute(
                f"UPDATE entries SET {update} WHERE id = ? AND tenant = ? AND user_id = ? "
                f"AND (? IS NULL OR scope_key = ?) RETURNING {_READ}",
                (entry_id, tenant, user, scope_key, scope_key),
            ).fetchone()
        return None if row is None else _entry(row)

    def _delete_where(self, where: str, params: Sequence[Any]) -> int:
        with self._write() as conn:
            rows = conn.execute(f"DELETE FROM entries WHERE {where} RETURNING rowid", tuple(params)).fetchall()
            if not rows:
                return 0
            known = conn.execute("SELECT value FROM meta WHERE key = 'deletions'").fetchone()[0]
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'deletions'")
            if known == self._generation:  # nobody else deleted since our last sync: patch the index
                self._index.remove([r[0] for r in rows])
                self._generation = known + 1
        return len(rows)

    def delete(
        self,
        *,
        tenant: str | None = None,
        user: str | None = None,
        scope_key: str | None = None,
        strategy_id: str | None = None,
        entry_ids: Sequence[str] | None = None,
    ) -> int:
        clauses, params = ["1 = 1"], []
        for column, value in (("tenant", tenant), ("user_id", user), ("scope_key", scope_key)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if strategy_id is not None:
            clauses.append("strategy_id = ?")
            params.append(strategy_id)
        if entry_ids is not None:
            clauses.append(f"id IN ({', '.join('?' * len(entry_ids))})" if entry_ids else "0 = 1")
            params.extend(entry_ids)
        return self._delete_where(" AND ".join(clauses), params)

    def purge_expired(self, now: float) -> int:
        return self._delete_where("expires_at IS NOT NULL AND expires_at <= ?", (now,))

    def evict(self, max_entries: int) -> int:
        over = self.count() - max_entries
        if over <= 0:
            return 0
        return self._delete_where(
            "rowid IN (SELECT rowid FROM entries ORDER BY last_used ASC, rowid ASC LIMIT ?)", (over,)
        )

    # ------------------------------------------------------------------ reads

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def get_exact(self, scope_key: str, query_hash: str, now: float, *, tenant: str = "") -> Entry | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_READ} FROM entries WHERE scope_key = ? AND query_hash = ? "
                "AND (expires_at IS NULL OR expires_at > ?) ORDER BY rowid DESC LIMIT 1",
                (scope_key, query_hash, now),
            ).fetchone()
        return None if row is None else _entry(row)

    def search(
        self,
        scope_key: str,
        vector: np.ndarray,
        *,
        k: int,
        min_similarity: float,
        now: float,
        tenant: str = "",
    ) -> list[tuple[Entry, float]]:
        with self._lock:
            self._refresh()
            found = self._index.search(scope_key, vector, k=k, min_similarity=min_similarity, now=now)
            if not found:
                return []
            marks = ", ".join("?" * len(found))
            rows = self._conn.execute(
                f"SELECT rowid, {_READ} FROM entries WHERE rowid IN ({marks})", [i for i, _ in found]
            ).fetchall()
        by_rowid = {row[0]: _entry(row[1:]) for row in rows}
        return [(by_rowid[i], sim) for i, sim in found if i in by_rowid]

    def _refresh(self) -> None:
        """Bring the in-process index up to date with the file (called with the lock held)."""
        data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version == self._data_version and not self._dirty:
            return
        generation = self._conn.execute("SELECT value FROM meta WHERE key = 'deletions'").fetchone()[0]
        if generation != self._generation:
            self._index.clear()
            self._max_rowid = 0
        self._load_since(self._max_rowid)
        self._generation, self._data_version, self._dirty = generation, data_version, False

    def _load_since(self, rowid: int) -> None:
        cursor = self._conn.execute(
            "SELECT rowid, scope_key, expires_at, vector FROM entries WHERE rowid > ? AND vector IS NOT NULL "
            "ORDER BY rowid",
            (rowid,),
        )
        while batch := cursor.fetchmany(20000):
            self._max_rowid = max(self._max_rowid, batch[-1][0])
            dim = len(batch[0][3]) // 4
            if self._index.dim is not None and dim != self._index.dim:
                raise ConfigurationError(f"{self.path}: rows of dimension {dim} and {self._index.dim} mixed")
            matrix = np.frombuffer(b"".join(r[3] for r in batch), dtype=np.float32).reshape(len(batch), dim)
            groups: dict[str, list[int]] = {}
            for i, row in enumerate(batch):
                groups.setdefault(row[1], []).append(i)
            for key, rows in groups.items():
                self._index.add(key, [batch[i][0] for i in rows], matrix[rows], [batch[i][2] for i in rows])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
