"""Opening a ledger from a URL: ``memory:``, ``sqlite:///PATH`` (or a file path), ``redis://HOST:PORT/DB``.

>>> isinstance(open_ledger("memory:"), MemoryLedger)
True
"""

from __future__ import annotations

import os

from shared_scorer.budget.ledger import Ledger, MemoryLedger
from shared_scorer.budget.sqlite_ledger import SQLiteLedger
from shared_scorer.errors import ConfigurationError

__all__ = ["open_ledger", "sqlite_path"]


def sqlite_path(spec: str) -> str:
    """The file a SQLite ledger URL names, by SQLAlchemy's convention.

    ``sqlite:///ledger.db`` is the relative path ``ledger.db`` (from the working folder) and
    ``sqlite:////var/lib/ledger.db`` the absolute ``/var/lib/ledger.db``; anything else after
    ``sqlite://`` (a host, nothing at all) is a :class:`ConfigurationError`.

    >>> sqlite_path("sqlite:///ledger.db"), sqlite_path("sqlite:////var/lib/ledger.db")
    ('ledger.db', '/var/lib/ledger.db')
    """
    path = spec.removeprefix("sqlite:///") if spec.startswith("sqlite:///") else ""
    if not path or path == "/":
        raise ConfigurationError(
            f"ledger URL {spec!r} names no file: expected sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    return path


def open_ledger(spec: str | Ledger, *, must_exist: bool = False) -> Ledger:
    """A ledger from a URL: ``memory:``, ``sqlite:///PATH`` (or a plain file path), ``redis://HOST:PORT/DB``.

    SQLite URLs follow SQLAlchemy: ``sqlite:///ledger.db`` is ``ledger.db`` relative to the working
    folder, ``sqlite:////abs/path/ledger.db`` (four slashes) is absolute. A plain path is used as given.
    A missing SQLite file is created, unless ``must_exist`` (readers such as ``frugal report``), where it
    is a :class:`ConfigurationError` naming the ledger and nothing is created.

    >>> isinstance(open_ledger("memory:"), MemoryLedger)
    True
    """
    if not isinstance(spec, str):
        return spec
    if spec in ("memory:", "memory://"):
        return MemoryLedger()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from shared_scorer.budget.redis_ledger import RedisLedger

        return RedisLedger(spec)
    path = spec
    if spec.startswith("sqlite:"):
        path = sqlite_path(spec)
    elif "://" in spec:
        raise ConfigurationError(
            f"unknown ledger URL {spec!r}: expected memory:, sqlite:///PATH, a file path or redis://HOST:PORT/DB"
        )
    if must_exist and not os.path.isfile(path):
        where = "" if path == spec else f" (file {os.path.abspath(path)})"
        raise ConfigurationError(f"ledger {spec!r} does not exist{where}")
    return SQLiteLedger(path)
