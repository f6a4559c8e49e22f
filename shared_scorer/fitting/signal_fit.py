"""The signal half of ``frugal fit``: query priors, per-stage combiners, and the table columns they imply.

Given out-of-fold text logits, :meth:`SignalFit.run` embeds the queries (local MiniLM), cross-fits the
query prior (:mod:`shared_scorer.scoring.prior`), fits each model's combiners with honest out-of-fold
selection (:mod:`shared_scorer.fitting.combine`), attaches the shipped combiners and prior to the scorer,
and warns about every stage whose scorer is no better than chance. :meth:`SignalFit.columns` then adds
the router-gated columns and the conditional scores to the search table (:mod:`shared_scorer.fitting.routing`).

A scorer that cannot carry combiners (a custom trainer's) keeps its own calibrated score: the table is then
exactly what that scorer computes at run time.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared_scorer.fitting.combine import combine
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.routing import add_router_columns, conditional_after, prior_matrix
from shared_scorer.fitting.search import Table
from shared_scorer.scoring.prior import cross_fitted_prior, fit_prior


class ChanceWarning(UserWarning):
    """A stage's scorer is no better than chance on the fitting data: no threshold is built on it."""


def minilm_embed(texts: Sequence[str]) -> np.ndarray:
    """Query embeddings from the local MiniLM encoder."""
    from shared_scorer.embeddings import MiniLMEmbedder

    return MiniLMEmbedder().embed(list(texts))


@dataclass
class SignalFit:
    """What the signals give the search: first-stage scores, conditional scores, out-of-fold priors."""

    first: dict[tuple[str, str], float] | None = None
    first_matrix: np.ndarray | None = None
    after: np.ndarray | None = None
    prior: np.ndarray | None = None
    models: list[str] = field(default_factory=list)
    router: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    chance: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def run(
        cls,
        ids: Sequence[str],
        rows: Sequence[Record],
        models: Sequence[str],
        fold: Mapping[str, int],
        logits: Mapping[tuple[str, str], float],
        scorer: Any,
        config: Any,
        progress: Callable[[str], None] | None = None,
    ) -> SignalFit:
        """``config`` is the :class:`~shared_scorer.fitting.fit.FitConfig`; ``scorer`` gets the combiners and prior."""
        signals = tuple(config.signals)
        if not signals or not hasattr(scorer, "combiners"):
            return cls()
        seconds: dict[str, float] = {}
        prior_oof = None
        priors: dict[tuple[str, str], float] | None = None
        if "prior" in signals or config.router:
            started = time.perf_counter()
            if progress:
                progress(f"query prior: embedding {len(ids)} queries")
            text = {r.query_id: r.query for r in rows}
            vectors = np.asarray((config.embed or minilm_embed)([text[q] for q in ids]), dtype=float)
            labels = _labels(ids, rows, models)
            oof = cross_fitted_prior(vectors, labels, [fold[q] for q in ids])
            scorer.prior = fit_prior(vectors, labels)
            prior_oof = np.column_stack([oof[m] for m in models])
            priors = {(q, m): float(prior_oof[i, j]) for i, q in enumerate(ids) for j, m in enumerate(models)}
            seconds["prior"] = time.perf_counter() - started
        started = time.perf_counter()
        combined = combine(
            ids,
            rows,
            models,
            fold,
            logits if "text" in signals else None,
            priors if "prior" in signals else None,
            signals=signals,
        )
        seconds["combine"] = time.perf_counter() - started
        scorer.combiners = combined.combiners
        chance = [m for m in models if all(v["chance"] for k, v in combined.report[m].items() if k.startswith("first"))]
        for m in chance:
            warnings.warn(
                f"the scorer of {m} is no better than chance on the fitting data (out-of-fold AUROC "
                f"{_best(combined.report[m]):.3f}): no threshold is built on it; it can only be used last or skipped",
                ChanceWarning,
                stacklevel=2,
            )
        first = {(q, m): float(combined.first[i, j]) for i, q in enumerate(ids) for j, m in enumerate(models)}
        return cls(
            first=first,
            first_matrix=combined.first,
            after=combined.after,
            prior=prior_oof,
            models=list(models),
            router=bool(config.router) and prior_oof is not None,
            report=combined.report,
            chance=chance,
            seconds=seconds,
        )

    def columns(self, table: Table, ids: Sequence[str], models: Sequence[str]) -> tuple[Table, dict[str, list[float]]]:
        """``table`` (plain and capped columns, ``ids`` order) with router columns and conditional scores."""
        if self.after is None or self.first_matrix is None:
            return table, {}
        gates: dict[str, list[float]] = {}
        if self.router and self.prior is not None:
            table, gates = add_router_columns(table, models, self.prior)
        return conditional_after(table, models, self.first_matrix, self.after), gates


def _labels(ids: Sequence[str], rows: Sequence[Record], models: Sequence[str]) -> dict[str, np.ndarray]:
    where = {q: i for i, q in enumerate(ids)}
    out = {m: np.zeros(len(ids)) for m in models}
    for r in rows:
        if r.model in out and r.query_id in where:
            out[r.model][where[r.query_id]] = r.correct
    return out


def _best(report: Mapping[str, Any]) -> float:
    """The best out-of-fold AUROC of a model's first-position combiners."""
    return max((float(v["oof_auroc"]) for k, v in report.items() if k.startswith("first")), default=0.5)


def test_priors(scorer: Any, ids: Sequence[str], rows: Sequence[Record], models: Sequence[str]) -> np.ndarray | None:
    """The shipped prior's probabilities for a test split's queries (queries x models), or ``None``."""
    prior = getattr(scorer, "prior", None)
    if prior is None:
        return None
    text = {r.query_id: r.query for r in rows}
    vectors = (
        prior.embedder.embed([text[q] for q in ids])
        if prior.embedder is not None
        else minilm_embed([text[q] for q in ids])
    )
    predicted = prior.predict_vectors(np.asarray(vectors, dtype=float))
    return np.column_stack([predicted[m] for m in models])


__all__ = ["ChanceWarning", "SignalFit", "minilm_embed", "prior_matrix", "test_priors"]
