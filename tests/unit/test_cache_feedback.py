"""``AnswerCache(max_wrong_rate=...)`` and ``feedback``: the operating point from the verifier's validation
curve, per-entry tightening and loosening (the rule of :mod:`shared_scorer.cache.bound`), persistence in
the SQLite store, and scoping of feedback. Figures are exact: the verifier's scores are a table."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import pytest

from shared_scorer.cache import AnswerCache, HashingEmbedder
from shared_scorer.cache.bound import wrong_rate_upper
from shared_scorer.cache.verifier import ThresholdedVerifier
from shared_scorer.context import CallContext, Scope
from shared_scorer.errors import ConfigurationError

ANN = CallContext(Scope("acme", "ann"), "fp")
BOB = CallContext(Scope("acme", "bob"), "fp")
CACHED = "How do I reset my password?"
PROBS = {
    "How can I reset my password?": 0.92,
    "How could I reset my password?": 0.95,
    "How should I reset my password?": 0.99,
    "How would I reset my password?": 0.8,
}


def curve() -> dict[str, object]:
    """400 validation pairs at cosine 0.95: P 0.95 (100 duplicates), 0.9 (97 of 100), 0.7 (85 of 100),
    0.5 (50 of 100). At a 5% bound the point is P >= 0.9 (3 wrong of 200); at 10%, P >= 0.7 (18 of 300)."""
    probs = [0.95] * 100 + [0.9] * 100 + [0.7] * 100 + [0.5] * 100
    duplicate = [True] * 100 + [True] * 97 + [False] * 3 + [True] * 85 + [False] * 15 + [True] * 50 + [False] * 50
    n = len(probs)
    return {"probs": probs, "sims": [0.95] * n, "duplicate": duplicate, "guard_passes": [True] * n, "margin_z": 1.0}


class TableVerifier(ThresholdedVerifier):
    def __init__(self) -> None:
        self.threshold, self.min_similarity = 0.5, 0.6  # its own saved point (used without a bound)
        self.info = {"calibration": curve()}

    def probabilities(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        return np.array([PROBS.get(q, 0.0) for q in second])


def cache(store: object = None, **options: object) -> AnswerCache:
    return AnswerCache(store, embedder=HashingEmbedder(), verifier=TableVerifier(), **options)  # type: ignore[arg-type]


def put(c: AnswerCache, context: CallContext = ANN) -> str:
    c.store(CACHED, "Use the reset link.", context, model="small", score=0.9, cost_usd=Decimal("0.003"))
    hit = c.lookup(CACHED, context)
    assert hit is not None and hit.similarity == 1.0
    return hit.entry_id


def test_the_bound_picks_the_operating_point_from_the_validation_curve():
    assert (
        cache(max_wrong_rate=0.05).operating_point.threshold,
        cache(max_wrong_rate=0.05).operating_point.min_similarity,
    ) == (0.9, 0.6)
    assert cache(max_wrong_rate=0.05).operating_point.estimated_wrong_share == 0.015
    assert cache(max_wrong_rate=0.10).operating_point.threshold == 0.7
    assert cache(max_wrong_rate=0.10).operating_point.estimated_wrong_share == 0.06
    assert cache().operating_point.threshold == 0.5  # no bound: the verifier's own point
    c = cache(max_wrong_rate=0.05)
    put(c)
    assert c.lookup("How would I reset my password?", ANN) is None  # 0.8 < 0.9
    assert c.lookup("How can I reset my password?", ANN) is not None  # 0.92


def test_a_wrong_hit_tightens_its_entry_and_two_block_its_semantic_hits():
    c = cache(max_wrong_rate=0.05)
    entry = put(c)
    hit = c.lookup("How can I reset my password?", ANN)
    assert hit is not None and hit.entry_id == entry
    state = c.feedback(hit, False, ANN)
    assert state is not None
    assert (state["wrong"], state["confirmed"], state["wrong_score"]) == (1, 0, 0.92)
    assert state["threshold"] == math.nextafter(0.92, math.inf) and not state["semantic_blocked"]
    assert c.lookup("How can I reset my password?", ANN) is None  # 0.92 is no longer enough
    again = c.lookup("How could I reset my password?", ANN)  # 0.95 > 0.92
    assert again is not None
    state = c.feedback(again.entry_id, False, ANN)  # by id, as in an adapter's trail
    assert state is not None
    assert (state["wrong"], state["wrong_score"], state["semantic_blocked"]) == (2, 0.95, True)
    assert c.lookup("How should I reset my password?", ANN) is None  # even 0.99: blocked
    assert c.lookup(CACHED, ANN) is not None  # the exact question still gets its own answer


def test_a_wrong_exact_hit_stops_the_entry_entirely():
    c = cache(max_wrong_rate=0.05)
    entry = put(c)
    state = c.feedback(entry, False, ANN)  # the last hit was the exact one (score 2.0)
    assert state is not None and (state["wrong_score"], state["exact_allowed"]) == (2.0, False)
    assert c.lookup(CACHED, ANN) is None
    assert c.lookup("How should I reset my password?", ANN) is None


def test_confirmed_hits_loosen_an_entry_only_once_the_beta_bound_is_under_the_error_bound():
    c = cache(max_wrong_rate=0.05)
    entry = put(c)
    assert c.lookup("How would I reset my password?", ANN) is None  # 0.8 < 0.9
    for _ in range(57):
        state = c.feedback(entry, True, ANN)
    assert state is not None
    assert (state["confirmed"], state["trusted"], state["wrong_rate_upper"]) == (57, False, 0.050339)
    assert c.lookup("How would I reset my password?", ANN) is None
    state = c.feedback(entry, True, ANN)
    assert state is not None
    assert (state["confirmed"], state["trusted"], state["wrong_rate_upper"]) == (58, True, 0.049508)
    assert state["threshold"] == 0.7  # the point of the 2 x 5% bound on the same curve
    hit = c.lookup("How would I reset my password?", ANN)  # 0.8 >= 0.7 now
    assert hit is not None
    state = c.feedback(hit, False, ANN)  # one wrong: Beta(2, 59) upper 0.0766 > 0.05, back to 0.9
    assert state is not None
    assert (state["trusted"], state["threshold"]) == (False, 0.9)
    assert state["wrong_rate_upper"] == round(wrong_rate_upper(1, 58), 6) == 0.07664
    assert c.lookup("How can I reset my password?", ANN) is not None  # 0.92 >= 0.9 still


def test_without_a_bound_entries_tighten_but_never_loosen():
    c = cache()
    entry = put(c)
    for _ in range(100):
        c.feedback(entry, True, ANN)
    state = c.entry_state(entry, ANN)
    assert state is not None and (state["confirmed"], state["trusted"], state["threshold"]) == (100, False, 0.5)


def test_feedback_from_another_scope_changes_nothing():
    c = cache(max_wrong_rate=0.05)
    entry = put(c)
    assert c.feedback(entry, False, BOB) is None
    assert c.feedback(entry, False, CallContext(Scope("acme", "ann"), "other-fp")) is None
    assert c.entry_state(entry, BOB) is None
    state = c.entry_state(entry, ANN)
    assert state is not None and (state["wrong"], state["confirmed"]) == (0, 0)
    assert c.feedback("no-such-entry", False, ANN) is None


def test_feedback_state_persists_in_the_sqlite_file(tmp_path):
    path = tmp_path / "cache.sqlite"
    first = cache(path, max_wrong_rate=0.05)
    entry = put(first)
    hit = first.lookup("How can I reset my password?", ANN)
    assert hit is not None
    first.feedback(hit, False, ANN)
    first.close()
    second = cache(path, max_wrong_rate=0.05)
    state = second.entry_state(entry, ANN)
    assert state is not None and (state["wrong"], state["wrong_score"]) == (1, 0.92)
    assert second.lookup("How can I reset my password?", ANN) is None


def test_a_version_1_file_is_upgraded_and_keeps_its_entries(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE entries (rowid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            scope_key TEXT NOT NULL, tenant TEXT NOT NULL, user_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
            strategy_id TEXT NOT NULL, query TEXT NOT NULL, query_hash TEXT NOT NULL, answer TEXT NOT NULL,
            model TEXT NOT NULL, score REAL, cost_usd TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,
            last_used REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0, vector BLOB);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema', 1), ('deletions', 0);
        """
    )
    conn.close()
    old = AnswerCache(path, semantic=False)
    old.store(CACHED, "Use the reset link.", ANN, model="small", score=None, cost_usd=Decimal("0.003"))
    hit = old.lookup(CACHED, ANN)
    assert hit is not None
    state = old.feedback(hit, True, ANN)
    assert state is not None and state["confirmed"] == 1
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (2,)


def test_bad_bounds_and_uncalibrated_verifiers_are_refused():
    with pytest.raises(ConfigurationError, match="max_wrong_rate must be in"):
        cache(max_wrong_rate=0.0)

    class Uncalibrated(TableVerifier):
        def __init__(self) -> None:
            super().__init__()
            self.info = {}

    with pytest.raises(ConfigurationError, match="no validation curve"):
        AnswerCache(embedder=HashingEmbedder(), verifier=Uncalibrated(), max_wrong_rate=0.05)


def test_feedback_with_the_scope_alone_as_an_adapter_caller_knows_it():
    c = cache(max_wrong_rate=0.05)
    entry = put(c)
    assert c.feedback(entry, True, Scope("acme", "bob")) is None  # another user
    assert c.feedback(entry, True, Scope("globex", "ann")) is None  # another tenant
    state = c.feedback(entry, True, Scope("acme", "ann"))
    assert state is not None and state["confirmed"] == 1
    assert c.entry_state(entry, Scope("acme", "ann")) == state


def test_a_wider_bound_point_that_is_stricter_in_one_dimension_is_never_used_to_loosen():
    from dataclasses import replace as with_counts

    from shared_scorer.cache.bound import EntryPolicy, OperatingPoint
    from shared_scorer.cache.store import Entry

    entry = Entry("e", "k", "t", "u", "fp", "", "q", "h", "a", "m", None, Decimal("0"), 0.0, None)
    trusted = with_counts(entry, confirmed=100)
    point = OperatingPoint(0.6, 0.9)
    higher_floor = EntryPolicy(point, loose=OperatingPoint(0.7, 0.8), max_wrong_rate=0.05)
    assert higher_floor.loose is None and higher_floor.for_entry(trusted) == point
    looser = EntryPolicy(point, loose=OperatingPoint(0.6, 0.8), max_wrong_rate=0.05)
    assert looser.for_entry(trusted) == OperatingPoint(0.6, 0.8) and looser.for_entry(entry) == point
