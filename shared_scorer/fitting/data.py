"""Recorded-answer datasets: one JSON Lines row per (query, model), validated field by field.

The schema is the one of ``shared/datasets/README.md``::

    {"query_id": str, "query": str, "system": str?, "model": str, "answer": str,
     "correct": float in [0, 1], "input_tokens": int?, "output_tokens": int?,
     "cost_usd": float, "reference": str | null, "logprob": float <= 0?}

``logprob`` is the log-probability the provider gave the answer (the sum of its tokens'), where recorded.

What the caller's context adds (optional; a scorer fitted with context reads them, see
:class:`~shared_scorer.scoring.encoding.PairEncoder`): ``"system"`` the system prompt, ``"profile"`` the
caller's profile (a string, or an object rendered by :func:`~shared_scorer.context.render_profile`) and
``"history"`` the earlier turns, a list of strings ``"role: text"`` (oldest first).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared_scorer.context import render_profile
from shared_scorer.errors import DataError
from shared_scorer.jsonl import iter_json_lines


@dataclass(frozen=True)
class Record:
    """One recorded answer of one model to one query."""

    query_id: str
    query: str
    model: str
    answer: str
    correct: float
    cost_usd: float
    input_tokens: int | None = None
    output_tokens: int | None = None
    reference: str | None = None
    system: str | None = None
    logprob: float | None = None
    """The answer's log-probability as the provider returned it (<= 0), or None where not recorded."""
    profile: str | None = None
    """The caller's profile as text (an object in the file is rendered by ``render_profile``)."""
    history: tuple[str, ...] | None = None
    """The earlier turns of the conversation as ``"role: text"``, oldest first."""


_REQUIRED_STR = ("query_id", "query", "model", "answer")


def parse_record(row: object, where: str) -> Record:
    """Validate one decoded JSON row; ``where`` (``file:line``) is named in every error."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in _REQUIRED_STR:
        if not isinstance(row.get(name), str):
            raise DataError(f"{where}: field {name!r} must be a string, got {row.get(name)!r:.80}")
    correct = _number(row, "correct", where)
    if not 0.0 <= correct <= 1.0:
        raise DataError(f"{where}: field 'correct' must be in [0, 1], got {correct!r}")
    cost = _number(row, "cost_usd", where)
    if cost < 0:
        raise DataError(f"{where}: field 'cost_usd' must be >= 0, got {cost!r}")
    tokens = {}
    for name in ("input_tokens", "output_tokens"):
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DataError(f"{where}: field {name!r} must be a non-negative integer or absent, got {value!r}")
        tokens[name] = value
    for name in ("reference", "system"):
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} must be a string or null, got {value!r:.80}")
    logprob = _logprob(row, where)
    profile, history = _context(row, where)
    return Record(
        query_id=row["query_id"],
        query=row["query"],
        model=row["model"],
        answer=row["answer"],
        correct=correct,
        cost_usd=cost,
        input_tokens=tokens["input_tokens"],
        output_tokens=tokens["output_tokens"],
        reference=row.get("reference"),
        system=row.get("system"),
        logprob=logprob,
        profile=profile,
        history=history,
    )


def _context(row: dict[str, object], where: str) -> tuple[str | None, tuple[str, ...] | None]:
    """The optional ``profile`` (a string or an object, rendered) and ``history`` (a list of strings)."""
    profile = row.get("profile")
    if profile is not None and not isinstance(profile, str | dict):
        raise DataError(f"{where}: field 'profile' must be a string, an object or absent, got {profile!r:.80}")
    history = row.get("history")
    if history is not None and (not isinstance(history, list) or not all(isinstance(h, str) for h in history)):
        raise DataError(f"{where}: field 'history' must be a list of strings or absent, got {history!r:.80}")
    return (None if profile is None else render_profile(profile)), (None if history is None else tuple(history))


def _logprob(row: dict[str, object], where: str) -> float | None:
    value = row.get("logprob")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: field 'logprob' must be a finite number <= 0 or absent, got {value!r:.80}")
    if value > 0:
        raise DataError(f"{where}: field 'logprob' must be <= 0 (a log-probability), got {value!r}")
    return float(value)


def _number(row: dict[str, object], name: str, where: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: field {name!r} must be a finite number, got {value!r}")
    return float(value)


def iter_records(path: str | Path) -> Iterator[Record]:
    """Yield the rows of a recorded JSON Lines file, failing on the first bad line with file:line."""
    for where, row in iter_json_lines(path):
        yield parse_record(row, where)


def load_records(path: str | Path) -> list[Record]:
    """Read a whole recorded file; duplicate (query_id, model) rows are an error."""
    records = list(iter_records(path))
    seen: set[tuple[str, str]] = set()
    for record in records:
        key = (record.query_id, record.model)
        if key in seen:
            raise DataError(f"{path}: query {record.query_id!r} has two rows for model {record.model!r}")
        seen.add(key)
    return records


def models_of(records: Iterable[Record]) -> list[str]:
    """The models present, in first-seen order."""
    return list(dict.fromkeys(r.model for r in records))


def fingerprint(records: Iterable[Record]) -> str:
    """A stable SHA-256 of the rows' content (order-independent), to tie artefacts to their data."""
    digests = sorted(
        hashlib.sha256(
            json.dumps([r.query_id, r.model, r.query, r.answer, r.correct], ensure_ascii=False).encode()
        ).hexdigest()
        for r in records
    )
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
