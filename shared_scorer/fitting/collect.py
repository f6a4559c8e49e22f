"""``frugal collect``: ask every provider every labelled query, grade the answers, write recorded rows.

Providers file (JSON: a list, or ``{"providers": [...]}``), one object per provider::

    {"name": "mini",                       # the ``model`` field of its rows (default: ``model``)
     "model": "gpt-5-mini",
     "base_url": "http://127.0.0.1:8000/v1",   # an OpenAI-compatible endpoint (ChatOpenAI), or
     "class": "langchain_openai:ChatOpenAI",   # any LangChain chat model class (module:Class or module.Class)
     "api_key_env": "OPENAI_API_KEY",          # optional: read the key from this variable
     "kwargs": {"temperature": 0},             # optional: passed to the class
     "price": {"input_per_mtok": 0.25, "output_per_mtok": 2.0},   # optional override, USD / million tokens
     "concurrency": 8}                         # optional: requests in flight for this provider

Labelled queries (JSON Lines): ``{"query": str, "reference": str, "system": str?, "query_id": str?,
"history": [{"role": "user" | "assistant", "content": str}, ...]?, "profile": str | object?}``.
``history`` (earlier turns) is sent before the query; ``profile`` (who asks) is not sent, only recorded
for the scorer. Both are written to the recorded rows (``history`` as ``"role: text"`` strings).

The output file is its own resumable store: each answer is appended (and flushed to disk) as soon as it
is graded, and a rerun skips every (query, provider) already in the file, so no answered query is paid
for twice. A line cut short by a crash is dropped on the next run.

Each answer's log-probability (the sum of its token log-probabilities) is recorded as ``logprob`` where the
provider returns one: a chat model with a ``logprobs`` field (ChatOpenAI) is asked with ``logprobs=True``
unless its ``kwargs`` set ``logprobs`` (``false`` for a server that rejects it) or it is an OpenAI reasoning
model (o1, o3, o4-mini, gpt-5), whose API rejects it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.context import render_profile
from shared_scorer.costs import Price, as_price, resolve_price
from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.data import parse_record
from shared_scorer.fitting.grading import Metric
from shared_scorer.jsonl import decode_line, iter_json_lines
from shared_scorer.outcome import asks_logprobs, sum_logprobs


@dataclass
class Provider:
    """One model to collect answers from; ``factory()`` builds its LangChain chat model.

    >>> p = Provider("echo", "echo-model", factory=lambda: None, price=as_price((1, 2), "echo-model"))
    >>> p.name, p.concurrency
    ('echo', 4)
    """

    name: str
    model: str
    factory: Callable[[], Any]
    price: Price | None = None
    concurrency: int = 4

    def resolved_price(self) -> Price:
        return self.price if self.price is not None else resolve_price(self.model)


@dataclass(frozen=True)
class LabelledQuery:
    """One query to ask, with its gold answer."""

    query_id: str
    query: str
    reference: str
    system: str | None = None
    history: tuple[tuple[str, str], ...] = ()
    """Earlier turns, ``(role, text)``, sent before the query."""
    profile: str | None = None
    """The caller's profile as text (recorded for the scorer, never sent)."""


def _import_class(spec: str, where: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: cannot import chat model class {spec!r} ({exc})") from None


def provider_from_json(raw: Any, where: str) -> Provider:
    """Parse one provider object; errors name ``where`` (``file: providers[i]``) and the field."""
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where}: expected an object, got {type(raw).__name__}")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"{where}: field 'model' must be a non-empty string")
    name = raw.get("name", model)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: field 'name' must be a non-empty string")
    base_url, cls_name = raw.get("base_url"), raw.get("class")
    if (base_url is None) == (cls_name is None):
        raise ConfigurationError(f"{where}: give exactly one of 'base_url' and 'class'")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"{where}: field 'kwargs' must be an object")
    key_env = raw.get("api_key_env")
    concurrency = raw.get("concurrency", 4)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"{where}: field 'concurrency' must be a positive integer")
    price = None
    if "price" in raw:
        try:
            price = as_price(raw["price"], model)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: field 'price': {exc}") from None

    def factory() -> Any:
        options = dict(kwargs)
        if key_env:
            options.setdefault("api_key", os.environ.get(key_env, ""))
        if base_url is not None:
            from langchain_openai import ChatOpenAI

            options.setdefault("api_key", "unused")
            return ChatOpenAI(model=model, base_url=base_url, max_retries=0, **options)
        cls = _import_class(str(cls_name), where)
        return cls(model=model, **options)

    return Provider(name, model, factory, price, concurrency)


def load_providers(path: str | Path) -> list[Provider]:
    """Read a providers file (see the module docstring)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read providers ({exc})") from None
    if isinstance(raw, dict):
        raw = raw.get("providers")
    if not isinstance(raw, list) or not raw:
        raise ConfigurationError(f"{path}: expected a non-empty list of providers")
    providers = [provider_from_json(p, f"{path}: providers[{i}]") for i, p in enumerate(raw)]
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{path}: provider names must be distinct, got {names}")
    return providers


def query_id_of(
    query: str, system: str | None, history: Sequence[tuple[str, str]] = (), profile: str | None = None
) -> str:
    """A stable id from the system prompt and the query (and the history and profile, when given: ids
    of queries without them are unchanged)."""
    text = f"{system or ''}\x00{query}"
    if history or profile:
        text += "\x00" + json.dumps([list(history), profile or ""], ensure_ascii=False)
    return "q-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _history(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    turns = value if isinstance(value, list) else None
    if turns is None or not all(
        isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
        for t in turns
    ):
        raise DataError(
            f"{where}: field 'history' must be a list of {{'role': 'user' | 'assistant', 'content': str}}, "
            f"got {value!r:.80}"
        )
    return tuple((t["role"], t["content"]) for t in turns)


def load_queries(path: str | Path) -> list[LabelledQuery]:
    """Read labelled queries (JSON Lines); a bad line is a DataError naming file and line."""
    out: list[LabelledQuery] = []
    seen: set[str] = set()
    for where, row in iter_json_lines(path, "queries"):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        for name in ("query", "reference"):
            if not isinstance(row.get(name), str):
                raise DataError(f"{where}: field {name!r} must be a string, got {row.get(name)!r:.60}")
        system = row.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: field 'system' must be a string or absent")
        history = _history(row.get("history"), where)
        profile = row.get("profile")
        if profile is not None and not isinstance(profile, str | dict):
            raise DataError(f"{where}: field 'profile' must be a string, an object or absent, got {profile!r:.60}")
        profile = render_profile(profile) or None
        qid = row.get("query_id") or query_id_of(row["query"], system, history, profile)
        if not isinstance(qid, str):
            raise DataError(f"{where}: field 'query_id' must be a string")
        if qid in seen:
            raise DataError(f"{where}: duplicate query_id {qid!r}")
        seen.add(qid)
        out.append(LabelledQuery(qid, row["query"], row["reference"], system, history, profile))
    return out


@dataclass
class _Store:
    """The output file: rows already there, and an append-and-flush writer."""

    path: Path
    done: set[tuple[str, str]] = field(default_factory=set)
    spent_before: Decimal = Decimal(0)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        data = self.path.read_bytes()
        raw_lines = data.split(b"\n")
        keep: list[str] = []
        for number, raw in enumerate(raw_lines, start=1):
            last = number >= len(raw_lines) - 1  # the last line may be cut short by an interruption
            try:
                line = decode_line(raw, f"{self.path}:{number}")
            except DataError:
                if last:
                    continue
                raise
            if not line.strip():
                continue
            try:
                record = parse_record(json.loads(line), f"{self.path}:{number}")
            except json.JSONDecodeError:
                if last:
                    continue
                raise DataError(f"{self.path}:{number}: not valid JSON (not a collect output file?)") from None
            self.done.add((record.query_id, record.model))
            self.spent_before += Decimal(str(record.cost_usd))
            keep.append(line)
        if len(keep) != sum(1 for x in raw_lines if x.strip()) or (data and not data.endswith(b"\n")):
            self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def append(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self.done.add((row["query_id"], row["model"]))


def _text(message: Any) -> str:
    text = getattr(message, "text", None)
    if isinstance(text, str):  # langchain-core >= 1.0: a property (a str subclass)
        return str(text)
    if callable(text):
        text = text()
        if isinstance(text, str):
            return text
    content = getattr(message, "content", message)
    return content if isinstance(content, str) else json.dumps(content, default=str)


def _with_logprobs(model: Any) -> Any:
    """``model``, or a copy asking for token log-probabilities where it has a ``logprobs`` field the
    provider's ``kwargs`` left unset (ChatOpenAI and its kin) and its model accepts it (:func:`asks_logprobs`)."""
    fields = getattr(type(model), "model_fields", {})
    if "logprobs" not in fields or "logprobs" in getattr(model, "model_fields_set", {"logprobs"}):
        return model
    if asks_logprobs(str(getattr(model, "model_name", None) or getattr(model, "model", ""))):
        return model.model_copy(update={"logprobs": True})
    return model


def _messages(q: LabelledQuery) -> list[tuple[str, str]]:
    return ([("system", q.system)] if q.system else []) + list(q.history) + [("user", q.query)]


async def _ask(
    provider: Provider,
    model: Any,
    q: LabelledQuery,
    retries: int,
    backoff: float,
    timeout: float,
    rng: np.random.Generator,
) -> Any:
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return await asyncio.wait_for(model.ainvoke(_messages(q)), timeout)
        except Exception:
            if attempt == retries:
                raise
            await asyncio.sleep(delay * (1 + 0.25 * float(rng.random())))
            delay *= 2
    raise AssertionError("unreachable")


async def collect_async(
    providers: Sequence[Provider],
    queries: Sequence[LabelledQuery],
    metric: Metric,
    out: str | Path,
    *,
    concurrency: int | None = None,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 120.0,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """The async body of :func:`collect`."""
    from tqdm.auto import tqdm

    store = _Store(Path(out))
    store.open()
    prices = {p.name: p.resolved_price() for p in providers}
    todo = [(p, q) for p in providers for q in queries if (q.query_id, p.name) not in store.done]
    skipped = len(providers) * len(queries) - len(todo)
    models = {p.name: _with_logprobs(p.factory()) for p in providers}
    limits = {p.name: asyncio.Semaphore(concurrency or p.concurrency) for p in providers}
    rng = np.random.default_rng(seed)
    spent = Decimal(0)
    failures: list[str] = []
    bar = tqdm(total=len(todo), desc="collect", disable=not progress)

    async def one(provider: Provider, q: LabelledQuery) -> None:
        nonlocal spent
        async with limits[provider.name]:
            try:
                message = await _ask(provider, models[provider.name], q, retries, backoff, timeout, rng)
            except Exception as exc:
                failures.append(f"{provider.name} / {q.query_id}: {type(exc).__name__}: {exc}"[:300])
                bar.update(1)
                return
        usage = getattr(message, "usage_metadata", None) or {}
        tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
        cost = prices[provider.name].cost(tokens_in or 0, tokens_out or 0)
        answer = _text(message)
        row: dict[str, Any] = {"query_id": q.query_id, "query": q.query}
        if q.system:
            row["system"] = q.system
        if q.profile:
            row["profile"] = q.profile
        if q.history:
            row["history"] = [f"{role}: {text}" for role, text in q.history]
        row |= {
            "model": provider.name,
            "answer": answer,
            "correct": float(metric(answer, q.reference)),
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": float(cost),
            "reference": q.reference,
            "logprob": sum_logprobs((getattr(message, "response_metadata", None) or {}).get("logprobs")),
        }
        store.append({k: v for k, v in row.items() if v is not None or k == "reference"})
        spent += cost
        bar.update(1)
        bar.set_postfix(spent=f"${spent:.4f}")

    try:
        await asyncio.gather(*(one(p, q) for p, q in todo))
    finally:
        bar.close()
    return {
        "out": str(store.path),
        "asked": len(todo) - len(failures),
        "skipped_already_answered": skipped,
        "failed": len(failures),
        "failures": failures[:20],
        "spent_usd": spent,
        "total_usd": store.spent_before + spent,
    }


def collect(
    providers: Sequence[Provider],
    queries: Sequence[LabelledQuery],
    metric: Metric,
    out: str | Path,
    **options: Any,
) -> dict[str, Any]:
    """Collect answers (see the module docstring); returns a summary (asked, skipped, failed, spend).

    Options: ``concurrency`` (overrides every provider's), ``retries`` (default 4), ``backoff`` (first
    delay in seconds, doubled each retry), ``timeout`` (seconds per request), ``progress``, ``seed``.
    """
    return asyncio.run(collect_async(providers, queries, metric, out, **options))
