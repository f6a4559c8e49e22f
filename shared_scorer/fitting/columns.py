"""Capped columns of the fitting table: a stage may call its model with ``max_tokens`` set, paying for at most that many
output tokens; a reply cut at the cap is unusable (the cascade escalates, or falls back at the last stage).

Why: reasoning models' output is heavy-tailed. On SimpleQA, gemini-3.1-pro writes a median of 827 output
tokens but a mean far above (p90 18k): capping it at a few thousand tokens keeps most of its correct
answers at a fraction of its cost, and the long replies it gives up on were mostly wrong anyway.

A chain entry ``model@N`` is ``model`` with its output capped at ``N`` tokens. ``frugal fit`` searches caps
as extra columns of the recorded table: a capped answer is usable when the recorded reply used at most
``N`` output tokens; otherwise it would have been cut, so it counts as wrong, escalates, and costs the
input plus ``N`` output tokens. The chain entry's syntax is :func:`shared_scorer.strategy.split_cap`; at
request time :func:`shared_scorer.adapters.assemble.apply_cap` sets the cap on a stage model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared_scorer.costs import PriceSpec, resolve_price
from shared_scorer.errors import ConfigurationError, UnknownPriceError
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.search import Table
from shared_scorer.strategy import capped_name

AUTO_QUANTILES = (0.5, 0.65, 0.8, 0.9, 0.95)


def auto_caps(output_tokens: Sequence[int], quantiles: Sequence[float] = AUTO_QUANTILES) -> list[int]:
    """Caps worth trying for one model: its output-token quantiles, rounded up to two significant digits,
    keeping only those some recorded reply exceeds (a cap nothing reaches changes nothing).

    >>> auto_caps([100, 200, 300, 400, 5000])
    [300, 360, 1400, 3200, 4100]
    """
    tokens = np.asarray(output_tokens, dtype=float)
    if tokens.size == 0:
        return []
    caps = []
    for q in quantiles:
        value = float(np.quantile(tokens, q))
        if value < 1:
            continue
        step = 10 ** max(0, math.floor(math.log10(value)) - 1)
        cap = int(math.ceil(value / step) * step)
        if cap < tokens.max() and cap not in caps:
            caps.append(cap)
    return caps


def choose_caps(rows: Sequence[Record], models: Sequence[str], caps: str | Sequence[int]) -> dict[str, list[int]]:
    """The caps to search per model: ``"auto"`` (:func:`auto_caps`), ``"none"``, or the same list for all."""
    if isinstance(caps, str):
        if caps == "none":
            return {}
        if caps != "auto":
            raise ConfigurationError(f"caps must be 'auto', 'none' or a list of token counts, got {caps!r}")
        out = {}
        for m in models:
            tokens = [r.output_tokens for r in rows if r.model == m]
            if tokens and all(t is not None for t in tokens):
                out[m] = auto_caps([int(t) for t in tokens if t is not None])
        return {m: c for m, c in out.items() if c}
    values = sorted({int(c) for c in caps})
    if any(c < 1 for c in values):
        raise ConfigurationError(f"caps must be positive token counts, got {list(caps)}")
    return {m: values for m in models} if values else {}


def add_capped_columns(
    table: Table,
    ids: Sequence[str],
    rows: Sequence[Record],
    caps: Mapping[str, Sequence[int]],
    prices: Mapping[str, PriceSpec] | None = None,
) -> tuple[Table, dict[str, Any]]:
    """``table`` plus one ``model@cap`` column per model and cap, and a report of what was added.

    A capped column keeps the model's score; its answer is usable where the recorded reply used at most
    ``cap`` output tokens, else it is wrong and costs the recorded cost less the output tokens past the cap.
    A model whose output price is unknown, or whose rows lack output token counts, gets no capped column
    (named in the report's ``skipped``).
    """
    where = {q: i for i, q in enumerate(ids)}
    column = {m: j for j, m in enumerate(table.models)}
    names, scores, correct, costs = list(table.models), [table.scores], [table.correct], [table.costs]
    valid = [np.column_stack([table.usable(j) for j in range(len(table.models))])]
    base = list(table.base or table.models)
    added: dict[str, list[int]] = {}
    skipped: dict[str, str] = {}
    for model, model_caps in caps.items():
        if model not in column or not model_caps:
            continue
        tokens = np.full(len(ids), -1, dtype=np.int64)
        for r in rows:
            if r.model == model and r.query_id in where:
                tokens[where[r.query_id]] = -1 if r.output_tokens is None else r.output_tokens
        if (tokens < 0).any():
            skipped[model] = "some rows have no output token count"
            continue
        try:
            per_token = float(resolve_price(model, prices).cost(0, 1_000_000)) / 1_000_000
        except UnknownPriceError:
            skipped[model] = "no known output price (give one with --prices)"
            continue
        j = column[model]
        for cap in model_caps:
            usable = table.usable(j) & (tokens <= cap)
            names.append(capped_name(model, cap))
            base.append(base[j])
            scores.append(table.scores[:, j : j + 1])
            correct.append((table.correct[:, j] * usable)[:, None])
            costs.append(np.maximum(table.costs[:, j] - np.maximum(tokens - cap, 0) * per_token, 0.0)[:, None])
            valid.append(usable[:, None])
            added.setdefault(model, []).append(int(cap))
    if not added:
        return table, {"caps": {}, "skipped": skipped}
    capped = Table.of(names, np.hstack(scores), np.hstack(correct), np.hstack(costs), valid=np.hstack(valid), base=base)
    return capped, {"caps": added, "skipped": skipped}
