"""The SQLite ledger: embedded, durable, shared by every process on one machine.

Check-and-hold runs in one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock), so two processes can
never both see room for the last dollar. The database is in WAL mode: readers (``frugal report``) do not
block writers. Money is stored as integer nano-dollars; records keep each cost's exact decimal string.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from shared_scorer.budget.ledger import RECORD_FIELDS, Charge, Denial, SpendRecord
from shared_scorer.errors import ConfigurationError

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, spent_nano INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS holds (
    rid TEXT NOT NULL, key TEXT NOT NULL, amount_nano INTEGER NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (rid, key)
);
CREATE INDEX IF NOT EXISTS holds_key ON holds (key);
CREATE INDEX IF NOT EXISTS holds_expires ON holds (expires);
CREATE TABLE IF NOT EXISTS records ({", ".join(f"{name} TEXT NOT NULL" for name in RECORD_FIELDS)});
CREATE INDEX IF NOT EXISTS records_day ON records (day);
"""


class SQLiteLedger:
    """A ledger in one SQLite file; every process that opens the same file shares the budget.

    >>> import tempfile, os
    >>> from shared_scorer.budget.ledger import Charge
    >>> ledger = SQLiteLedger(os.path.join(tempfile.mkdtemp(), "ledger.db"))
    >>> ledger.reserve("r1", [Charge("overall/all", 100)], 60, ttl_s=30) is None
    True
    >>> ledger.settle("r1", ["overall/all"], 25)
    >>> ledger.figures("overall/all")
    (25, 0)
    """

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigurationError(
                f"SQLite ledger {str(self.path)!r}: folder {str(self.path.parent)!r} does not exist"
            )
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._connection().executescript(_SCHEMA)  # idempotent; executescript runs in its own transaction

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():  # a forked child opens its own connection
            try:
                db = sqlite3.connect(
                    self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise ConfigurationError(f"SQLite ledger {str(self.path)!r} cannot be opened: {exc}") from None
            self._local.db, self._local.pid = db, os.getpid()
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _release_expired(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM holds WHERE expires <= ?", (self._clock(),))

    @staticmethod
    def _figures(db: sqlite3.Connection, key: str) -> tuple[int, int]:
        row = db.execute(
            "SELECT (SELECT spent_nano FROM buckets WHERE key = ?), (SELECT SUM(amount_nano) FROM holds WHERE key = ?)",
            (key, key),
        ).fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    def reserve(self, rid: str, charges: Sequence[Charge], amount_nano: int, ttl_s: float) -> Denial | None:
        with self._transaction() as db:
            self._release_expired(db)
            for i, charge in enumerate(charges):
                spent, held = self._figures(db, charge.key)
                if spent + held + amount_nano > charge.limit_nano:
                    return Denial(i, spent, held)
            expires = self._clock() + ttl_s
            db.executemany(
                "INSERT INTO holds (rid, key, amount_nano, expires) VALUES (?, ?, ?, ?)",
                [(rid, charge.key, amount_nano, expires) for charge in charges],
            )
            return None

    def settle(self, rid: str, keys: Sequence[str], actual_nano: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM holds WHERE rid = ?", (rid,))
            db.executemany(
                "INSERT INTO buckets (key, spent_nano) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET spent_nano = spent_nano + excluded.spent_nano",
                [(key, actual_nano) for key in keys],
            )

    def figures(self, key: str) -> tuple[int, int]:
        with self._transaction() as db:
            self._release_expired(db)
            return self._figures(db, key)

    def record(self, rows: Iterable[SpendRecord]) -> None:
        values = [tuple(row.as_strings()[name] for name in RECORD_FIELDS) for row in rows]
        if not values:
            return
        placeholders = ", ".join("?" for _ in RECORD_FIELDS)
        with self._transaction() as db:
            db.executemany(f"INSERT INTO records ({', '.join(RECORD_FIELDS)}) VALUES ({placeholders})", values)

    def records(self, since: float | None = None) -> list[SpendRecord]:
        db = self._connection()
        cursor = db.execute(f"SELECT {', '.join(RECORD_FIELDS)} FROM records ORDER BY rowid")
        rows = [
            SpendRecord.from_strings(dict(zip(RECORD_FIELDS, values, strict=True)), f"{self.path} records row {n}")
            for n, values in enumerate(cursor, start=1)
        ]
        return [r for r in rows if since is None or r.ts >= since]

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"
