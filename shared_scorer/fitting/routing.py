"""Columns of the fitting table beyond one per model: conditional scores and router-gated first stages.

* Conditional scores (:func:`conditional_after`): a stage's score depends on the stage before it (the
  ``agree`` signal), so the table carries ``after[i, p, m]`` for every pair of columns. A previous stage
  whose answer was unusable (cut at its output cap, or skipped by the router) left nothing to agree with:
  the stage is then scored as a first stage, as the cascade does at run time.
* Router columns (:func:`add_router_columns`): "start at stage k when the router says so". A gated
  column ``model|prior>=g`` calls its model only for queries whose out-of-fold query prior is at least
  ``g``; the other queries skip it at no cost (an unusable answer: they escalate). Gated columns may only
  start a chain, so the search compares fixed chains and router-started chains under the same budget
  ("Is Escalation Worth It?", 2026; Dekoninck et al., ICML 2025).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared_scorer.fitting.search import Table
from shared_scorer.strategy import gated_name, split_cap

GATE_QUANTILES = (0.2, 0.4, 0.6)
"""Gates tried per model: these quantiles of its out-of-fold query prior."""


def conditional_after(table: Table, models: Sequence[str], first: np.ndarray, after: np.ndarray) -> Table:
    """``table`` with ``after`` spanning all its columns (capped and gated ones share their model's scores)."""
    column_model = [models.index(split_cap(name)[0]) for name in table.models]
    k = len(table.models)
    spanned = np.empty((table.n, k, k))
    for c in range(k):
        m = column_model[c]
        for p in range(k):
            pm = column_model[p]
            scores = first[:, m] if pm == m else after[:, pm, m]
            spanned[:, p, c] = np.where(table.usable(p), scores, first[:, m])
    return Table.of(
        table.models,
        first[:, column_model],
        table.correct,
        table.costs,
        valid=None if table.valid is None else table.valid,
        base=table.base,
        after=spanned,
        first_only=sorted(table.first_only),
    )


def add_router_columns(
    table: Table,
    models: Sequence[str],
    prior: np.ndarray,
    quantiles: Sequence[float] = GATE_QUANTILES,
    given: Mapping[str, Sequence[float]] | None = None,
) -> tuple[Table, dict[str, list[float]]]:
    """``table`` plus gated columns for each plain model column (``prior[i, m]``: the query prior of
    ``models[m]``, out of fold when fitting), and the gates added per model: at the ``quantiles`` of each
    model's prior, or exactly the ``given`` ones (a test split gets the gates chosen on the train split)."""
    names, scores = list(table.models), [table.scores]
    correct, costs = [table.correct], [table.costs]
    valid = [np.column_stack([table.usable(j) for j in range(len(table.models))])]
    base = list(table.base or table.models)
    first_only = set(table.first_only)
    gates: dict[str, list[float]] = {}
    for j, name in enumerate(table.models):
        if name not in models:
            continue
        p = prior[:, list(models).index(name)]
        chosen = given.get(name, []) if given is not None else [round(float(np.quantile(p, q)), 4) for q in quantiles]
        for gate in chosen:
            called = p >= gate
            if given is None and (called.all() or not called.any() or gate in gates.get(name, [])):
                continue
            usable = table.usable(j) & called
            first_only.add(len(names))
            names.append(gated_name(name, gate))
            base.append(base[j])
            scores.append(table.scores[:, j : j + 1])
            correct.append((table.correct[:, j] * usable)[:, None])
            costs.append((table.costs[:, j] * called)[:, None])
            valid.append(usable[:, None])
            gates.setdefault(name, []).append(gate)
    if not gates:
        return table, {}
    out = Table.of(
        names,
        np.hstack(scores),
        np.hstack(correct),
        np.hstack(costs),
        valid=np.hstack(valid),
        base=base,
        first_only=sorted(first_only),
    )
    return out, gates


def prior_matrix(ids: Sequence[str], models: Sequence[str], prior: Mapping[tuple[str, str], float]) -> np.ndarray:
    """``prior[(query_id, model)]`` as an array (queries x models)."""
    return np.array([[prior[(q, m)] for m in models] for q in ids], dtype=float)
