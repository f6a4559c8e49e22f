"""Replay a recorded dataset through ``FrugalChatModel`` over the local replay server.

Each query goes through real ``ChatOpenAI`` clients pointed at a ``ReplayServer`` serving the recorded
answers; the cascade's answer is graded with the recorded label of the model that gave it. Single
models are graded on the same queries, so the figures compare like with like.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from langchain_openai import ChatOpenAI

from frugal_langchain.chat_models import FrugalChatModel
from shared_scorer.costs import PriceSpec, resolve_price
from shared_scorer.errors import CascadeError, ConfigurationError, DataError
from shared_scorer.fitting.data import Record
from shared_scorer.scoring.base import Scorer
from shared_scorer.server.replay import ReplayServer
from shared_scorer.strategy import split_cap


@dataclass(frozen=True)
class ModelFigures:
    model: str
    accuracy: float
    cost_per_query_usd: Decimal


def complete_queries(records: Sequence[Record], models: Sequence[str]) -> list[Record]:
    """One record per query that every model in ``models`` answered (the first model's rows)."""
    by_query: dict[str, set[str]] = defaultdict(set)
    for record in records:
        by_query[record.query_id].add(record.model)
    wanted = set(models)
    return [r for r in records if r.model == models[0] and wanted <= by_query[r.query_id]]


def single_model_figures(
    records: Sequence[Record], query_ids: set[str], models: Sequence[str], prices: Mapping[str, PriceSpec]
) -> list[ModelFigures]:
    figures = []
    for model in models:
        rows = [r for r in records if r.model == model and r.query_id in query_ids]
        if not rows:
            raise DataError(f"model {model!r} has no answers for the evaluated queries")
        price = resolve_price(model, prices)
        cost = sum((price.cost(r.input_tokens or 0, r.output_tokens or 0) for r in rows), Decimal(0))
        figures.append(ModelFigures(model, sum(r.correct for r in rows) / len(rows), cost / len(rows)))
    return figures


def evaluate(
    records: Sequence[Record],
    chain: Sequence[str],
    thresholds: Sequence[float],
    scorer: Scorer,
    prices: Mapping[str, PriceSpec],
    *,
    limit: int | None = None,
    concurrency: int = 4,
) -> dict[str, Any]:
    """Run the cascade over the dataset's queries and return the figures as a JSON-ready dict."""
    known = {r.model for r in records}
    models = [split_cap(m) for m in chain]  # "model@N": the model with its output capped at N tokens
    missing = [m for m, _ in models if m not in known]
    if missing:
        raise ConfigurationError(f"chain models not in the dataset: {missing}; it has {sorted(known)}")
    queries = complete_queries(records, [m for m, _ in models])[:limit]
    if not queries:
        raise DataError("no query was answered by every model of the chain")
    label = {(r.query_id, r.model): r.correct for r in records}
    all_models = sorted(known, key=lambda m: str(m))
    with ReplayServer(records) as server:
        stages = [
            ChatOpenAI(model=m, base_url=server.base_url, api_key="replay", max_retries=0, timeout=30, max_tokens=cap)
            for m, cap in models
        ]
        llm = FrugalChatModel(stages=stages, scorer=scorer, thresholds=list(thresholds), prices=dict(prices))
        # a query every stage failed on (e.g. cut at every cap) is an exception here: it counts as wrong
        messages = llm.batch(
            [q.query for q in queries], config={"max_concurrency": concurrency}, return_exceptions=True
        )
    correct = 0.0
    answered_by: dict[str, int] = defaultdict(int)
    for query, message in zip(queries, messages, strict=True):
        if isinstance(message, CascadeError):
            answered_by["(no answer)"] += 1
            continue
        if isinstance(message, BaseException):
            raise message
        model = message.response_metadata["frugal"]["model"]
        answered_by[model] += 1
        correct += label[(query.query_id, model)]
    summary = llm.cost_tracker.summary(decimals=True)
    total = summary["total_cost_usd"]
    assert isinstance(total, Decimal)
    query_ids = {q.query_id for q in queries}
    singles = single_model_figures(records, query_ids, [m for m in all_models if m in known], prices)
    return {
        "queries": len(queries),
        "chain": list(chain),
        "thresholds": list(thresholds),
        "cascade": {
            "accuracy": round(correct / len(queries), 4),
            "cost_per_query_usd": str(total / len(queries)),
            "total_cost_usd": str(total),
            "answered_by": dict(answered_by),
            "escalations": summary["escalations"],
        },
        "single_models": [
            {"model": f.model, "accuracy": round(f.accuracy, 4), "cost_per_query_usd": str(f.cost_per_query_usd)}
            for f in sorted(singles, key=lambda f: f.cost_per_query_usd)
        ],
    }


def format_table(result: Mapping[str, Any]) -> str:
    """The figures as a plain-text table."""
    rows = [(s["model"], s["accuracy"], Decimal(s["cost_per_query_usd"])) for s in result["single_models"]]
    cascade = result["cascade"]
    rows.append(
        ("cascade: " + " -> ".join(result["chain"]), cascade["accuracy"], Decimal(cascade["cost_per_query_usd"]))
    )
    width = max(len(r[0]) for r in rows)
    lines = [f"{'model':<{width}}  accuracy  cost/query (USD)", "-" * (width + 30)]
    lines += [f"{name:<{width}}  {acc:8.1%}  {cost:.7f}" for name, acc, cost in rows]
    lines.append(f"queries: {result['queries']}, thresholds: {result['thresholds']}")
    return "\n".join(lines)
