"""Several processes on one SQLite cache file: concurrent writers see each other; a killed writer leaves a
usable file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

from shared_scorer.cache import AnswerCache, HashingEmbedder
from shared_scorer.context import CallContext, Scope

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys, time
    from decimal import Decimal
    from shared_scorer.cache import AnswerCache, HashingEmbedder
    from shared_scorer.context import CallContext, Scope

    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = CallContext(Scope("acme", "ann"), "fp")
    cache = AnswerCache(path, embedder=HashingEmbedder(), max_entries=int(sys.argv[4]) if len(sys.argv) > 4 else None)
    print("ready", flush=True)
    for i in range(count):
        cache.store(f"question {name} number {i}", f"answer {name} {i}", ctx, model=name, score=1.0,
                    cost_usd=Decimal("0.001"))
        # every few writes, read what the other process wrote (exact and semantic through the index)
        if i % 10 == 9:
            cache.lookup(f"question {'b' if name == 'a' else 'a'} number {i // 2}", ctx)
    print("done", flush=True)
    """
)


def spawn(path: Path, name: str, count: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), name, str(count), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


class Confirm:
    min_similarity = 0.5

    def confirm(self, query, cached, similarities):
        return [True] * len(cached)


CTX = CallContext(Scope("acme", "ann"), "fp")


def test_two_processes_write_one_file_and_read_each_other(tmp_path):
    path = tmp_path / "shared.sqlite"
    reader = AnswerCache(path, embedder=HashingEmbedder(), verifier=Confirm())
    assert reader.lookup("question a number 5", CTX) is None  # the index is built (empty) before the writers
    writers = [spawn(path, "a", 200), spawn(path, "b", 200)]
    for w in writers:
        out, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
        assert out.split() == ["ready", "done"]
    assert len(reader) == 400
    for name in ("a", "b"):
        for i in (0, 123, 199):
            hit = reader.lookup(f"question {name} number {i}", CTX)
            assert hit is not None and hit.answer == f"answer {name} {i}" and hit.model == name
        semantic = reader.lookup(f"Question {name} number 77, please", CTX)  # not exact: through the index
        assert semantic is not None and semantic.similarity < 1.0 and semantic.answer == f"answer {name} 77"
    # deletions made by another process are seen too (the index is rebuilt)
    other = AnswerCache(path, embedder=HashingEmbedder())
    assert other.clear(Scope("acme", "ann")) == 400
    assert reader.lookup("Question a number 77, please", CTX) is None and len(reader) == 0


def test_a_process_killed_mid_write_leaves_a_usable_file(tmp_path):
    path = tmp_path / "killed.sqlite"
    writer = spawn(path, "a", 100_000)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with sqlite3.connect(path, timeout=10) as conn:
                if conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] >= 50:
                    break
        except sqlite3.OperationalError:
            continue
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache = AnswerCache(path, embedder=HashingEmbedder())
    survived = len(cache)
    assert survived >= 50
    assert cache.lookup("question a number 10", CTX).answer == "answer a 10"
    cache.store("after the crash", "still works", CTX, model="m", score=1.0, cost_usd=Decimal("0.001"))
    assert len(cache) == survived + 1 and cache.lookup("after the crash", CTX).answer == "still works"


FEEDBACK = textwrap.dedent(
    """
    import sys
    from shared_scorer.cache import AnswerCache
    from shared_scorer.context import Scope

    path, entry, count, correct = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    cache = AnswerCache(path, semantic=False)
    for _ in range(count):
        cache.feedback(entry, correct, Scope("acme", "ann"))
    print("done", flush=True)
    """
)


def test_feedback_from_several_processes_loses_no_count(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = AnswerCache(path, semantic=False)
    cache.store("Who wrote Emma?", "Jane Austen", CTX, model="m", score=1.0, cost_usd=Decimal("0.001"))
    hit = cache.lookup("who wrote emma", CTX)
    assert hit is not None
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", FEEDBACK, str(path), hit.entry_id, "40", flag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for flag in ("1", "1", "0")
    ]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0 and out.strip() == "done", err
    state = cache.entry_state(hit.entry_id, CTX)
    assert state is not None and (state["confirmed"], state["wrong"], state["wrong_score"]) == (80, 40, 2.0)
    assert cache.lookup("who wrote emma", CTX) is None  # an exact hit marked wrong stops the entry
