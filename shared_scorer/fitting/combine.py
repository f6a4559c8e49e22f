"""Fitting each stage's :class:`~shared_scorer.scoring.combiner.Combiner`, honestly.

Per model, four combiners: for a chain's first stage and for a later one (which also sees ``agree``, its
answer's agreement with the previous stage's), each with and without the provider's log-probability.
Each keeps a signal only when it raises the out-of-fold AUROC (greedy forward selection, a gain of at
least :data:`MIN_GAIN`), and a combiner whose out-of-fold AUROC is not clearly above chance (less than two
standard errors above 0.5) keeps none: it is a constant, the stage's base rate, and no threshold can be
built on it.

Why the AUROC here is measured *within* folds. Pooled out-of-fold scores mix folds whose models differ in
their intercept: a fold trained on queries where a model did well predicts high for its held-out queries,
where (the total being fixed) it did worse. Pooled AUROC then falls below 0.5 on a signal that carries
nothing (seen on MedMCQA: 0.35 for gpt-4o-mini's text scores). Folds are stratified by query difficulty
(how many models answered correctly, :func:`shared_scorer.fitting.crossfit.fold_of`), each fold's AUROC
is computed on that fold's rows only, and the mean is reported.

The table the search chooses thresholds on holds the *shipped* combiners' scores: their inputs (the text
logit, the query prior) are out of fold, and the combiner on top (at most six ridge-penalised weights, its
features chosen out of fold) is the very function the cascade computes at run time. Refitting it per fold
instead gave every fold its own monotone rescaling of the same signal, noise the threshold search then
fitted (measured on MedMCQA and GSM8K test splits: lower accuracy at 50% of the best model's cost).

The regression is a ridge-penalised logistic regression solved by Newton steps in numpy: a few features,
thousands of rows, milliseconds per fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shared_scorer.fitting.data import Record
from shared_scorer.scoring.combiner import FEATURES, Combiner, ModelCombiners, agreement, raw_features

MIN_GAIN = 0.005
"""A signal is kept when it raises the out-of-fold AUROC by at least this much."""
MIN_ROWS = 20
"""Fewer rows (or one class only) and no signal can be told from chance: the combiner is a constant."""
RIDGE = 1.0


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE, iterations: int = 25) -> tuple[np.ndarray, float]:
    """Weights and bias of a ridge-penalised logistic regression (the bias is not penalised).

    >>> w, b = fit_logistic(np.array([[-1.0], [-0.5], [0.5], [1.0]]), np.array([0.0, 1.0, 0.0, 1.0]))
    >>> bool(w[0] > 0), abs(round(b, 3))
    (True, 0.0)
    """
    n, k = x.shape
    design = np.column_stack([x, np.ones(n)])
    beta = np.zeros(k + 1)
    penalty = np.full(k + 1, ridge)
    penalty[-1] = 0.0
    rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3)) if n else 0.5
    beta[-1] = math.log(rate / (1 - rate))
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -30, 30)))
        gradient = design.T @ (p - y) + penalty * beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:k], float(beta[-1])


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is missing."""
    y = np.round(np.asarray(labels, dtype=float)).astype(bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def within_fold_auroc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Mean of each fold's AUROC (weighted by its rows), so that folds' offsets cannot fake or hide a signal."""
    total = weight = 0.0
    for g in np.unique(groups):
        mask = groups == g
        value = auroc(labels[mask], scores[mask])
        if not math.isnan(value):
            total += value * mask.sum()
            weight += mask.sum()
    return total / weight if weight else math.nan


def auroc_standard_error(value: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's standard error of an AUROC."""
    if positives == 0 or negatives == 0 or math.isnan(value):
        return math.inf
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    var = (value * (1 - value) + (positives - 1) * (q1 - value**2) + (negatives - 1) * (q2 - value**2)) / (
        positives * negatives
    )
    return math.sqrt(max(var, 1e-12))


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = np.nanmean(x, axis=0) if x.size else np.zeros(x.shape[1])
    mean = np.nan_to_num(mean)
    scale = np.nanstd(x, axis=0) if x.size else np.ones(x.shape[1])
    scale = np.where(np.nan_to_num(scale) > 1e-9, np.nan_to_num(scale), 1.0)
    return np.nan_to_num((x - mean) / scale, nan=0.0), mean, scale


def _fit(x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> Combiner:
    if not names:
        rate = float(np.clip(y.mean() if y.size else 0.5, 1e-3, 1 - 1e-3))
        return Combiner((), (), math.log(rate / (1 - rate)))
    z, mean, scale = _standardise(x)
    w, b = fit_logistic(z, y)
    return Combiner(
        tuple(names), tuple(float(v) for v in w), b, tuple(float(v) for v in mean), tuple(float(v) for v in scale)
    )


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Each row's probability from a combiner on ``names`` fitted on the other folds."""
    out = np.empty(len(y))
    for g in np.unique(groups):
        held = groups == g
        combiner = _fit(x[~held], y[~held], names)
        rows = [dict(zip(names, r, strict=True)) for r in x[held]]
        out[held] = combiner.apply_many(rows) if len(rows) else out[held]
    return out


@dataclass
class Selection:
    """What forward selection kept for one combiner, and why."""

    features: list[str]
    auroc: float
    alone: dict[str, float] = field(default_factory=dict)
    """Each candidate signal's out-of-fold AUROC on its own."""
    chance: bool = False
    """The combined AUROC is not clearly above 0.5: no feature kept."""


def select(x: np.ndarray, y: np.ndarray, groups: np.ndarray, candidates: Sequence[str]) -> Selection:
    """Greedy forward selection of columns of ``x`` (named ``candidates``) by within-fold out-of-fold AUROC."""
    usable = [j for j, _ in enumerate(candidates) if np.isfinite(x[:, j]).mean() >= 0.5 and np.nanstd(x[:, j]) > 0]
    if len(y) < MIN_ROWS or len(set(np.round(y).tolist())) < 2:
        return Selection([], 0.5, {}, chance=True)

    def score(columns: list[int]) -> float:
        names = [candidates[j] for j in columns]
        value = within_fold_auroc(y, out_of_fold(x[:, columns], y, groups, names), groups)
        return 0.5 if math.isnan(value) else value

    alone = {candidates[j]: round(score([j]), 4) for j in usable}
    chosen: list[int] = []
    best = 0.5
    while True:
        trials = {j: score([*chosen, j]) for j in usable if j not in chosen}
        if not trials:
            break
        j, value = max(trials.items(), key=lambda kv: kv[1])
        if value < best + MIN_GAIN:
            break
        chosen.append(j)
        best = value
    positives = int(np.round(y).sum())
    if chosen and best - 0.5 <= 2 * auroc_standard_error(best, positives, len(y) - positives):
        return Selection([], best, alone, chance=True)
    return Selection([candidates[j] for j in chosen], best, alone, chance=not chosen)


@dataclass
class CombinedScores:
    """The search's probabilities: ``first[i, m]`` for a chain's first stage, ``after[i, p, m]`` for model ``m``
    right after model ``p`` (``after[i, m, m]`` is ``first[i, m]``); the combiners fitted on every row; the
    report of what each kept."""

    models: list[str]
    first: np.ndarray
    after: np.ndarray
    combiners: dict[str, ModelCombiners]
    report: dict[str, Any]


def combine(
    ids: Sequence[str],
    rows: Sequence[Record],
    models: Sequence[str],
    fold: Mapping[str, int],
    text: Mapping[tuple[str, str], float] | None,
    prior: Mapping[tuple[str, str], float] | None,
    *,
    signals: Sequence[str] = FEATURES,
) -> CombinedScores:
    """Fit every model's combiners on ``rows`` (every query answered by every model) and return the shipped
    combiners' scores for the search; ``text`` are out-of-fold text logits, ``prior`` out-of-fold prior probabilities,
    ``signals`` the features allowed."""
    n, k = len(ids), len(models)
    record = {(r.query_id, r.model): r for r in rows}
    groups = np.array([fold[q] for q in ids])
    labels = np.zeros((n, k))
    base: dict[str, list[dict[str, float]]] = {}
    for j, m in enumerate(models):
        labels[:, j] = [record[(q, m)].correct for q in ids]
        base[m] = _first_features(ids, record, m, text, prior)
    first = np.zeros((n, k))
    after = np.zeros((n, k, k))
    combiners: dict[str, ModelCombiners] = {}
    report: dict[str, Any] = {}
    allowed = [f for f in FEATURES if f in set(signals)]
    for j, m in enumerate(models):
        y = labels[:, j]
        has_lp = np.array([not math.isnan(f["logprob"]) for f in base[m]])
        mine = ModelCombiners()
        report[m] = {}
        # first position: every row; with logprob where the rows have it
        x0 = np.array([[f[name] for name in allowed if name != "agree"] for f in base[m]], dtype=float)
        names0 = [name for name in allowed if name != "agree"]
        variants = _variants(names0, has_lp)
        for label, (names, mask) in variants.items():
            cols = [names0.index(c) for c in names]
            chosen = select(x0[mask][:, cols], y[mask], groups[mask], names)
            combiner = _final(x0[mask], y[mask], names0, chosen)
            (mine.with_logprob if label == "with_logprob" else mine.without_logprob)["first"] = combiner
            report[m][f"first/{label}"] = _describe(chosen)
        first[:, j] = _shipped_scores(x0, names0, mine, "first", has_lp)
        # later positions: the row repeated once per possible previous model, with its agreement
        if "agree" in allowed and k > 1:
            pairs = [(i, p) for p in range(k) if p != j for i in range(n)]
            answers = {mm: [record[(q, mm)].answer for q in ids] for mm in models}
            agree = np.array([agreement(answers[m][i], answers[models[p]][i]) for i, p in pairs])
            names1 = [*names0, "agree"]
            x1 = np.column_stack([x0[[i for i, _ in pairs]], agree])
            y1 = y[[i for i, _ in pairs]]
            g1 = groups[[i for i, _ in pairs]]
            lp1 = has_lp[[i for i, _ in pairs]]
            for label, (names, mask) in _variants(names1, lp1).items():
                cols = [names1.index(c) for c in names]
                chosen = select(x1[mask][:, cols], y1[mask], g1[mask], names)
                combiner = _final(x1[mask], y1[mask], names1, chosen)
                (mine.with_logprob if label == "with_logprob" else mine.without_logprob)["after"] = combiner
                report[m][f"after/{label}"] = _describe(chosen)
            scores = _shipped_scores(x1, names1, mine, "after", lp1)
            for row, (i, p) in enumerate(pairs):
                after[i, p, j] = scores[row]
        if "agree" not in allowed:
            after[:, :, j] = first[:, j][:, None]
        after[:, j, j] = first[:, j]
        combiners[m] = mine
    return CombinedScores(list(models), first, after, combiners, report)


def _final(x: np.ndarray, y: np.ndarray, names: Sequence[str], chosen: Selection) -> Combiner:
    """The combiner that ships: the kept features, fitted on every row, with its out-of-fold AUROC."""
    fitted = _fit(x[:, [list(names).index(c) for c in chosen.features]], y, chosen.features)
    return replace(fitted, auroc=round(chosen.auroc, 4))


def _variants(names: Sequence[str], has_lp: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
    """The ``without_logprob`` combiner on every row; the ``with_logprob`` one where most rows have it."""
    out = {"without_logprob": ([c for c in names if c != "logprob"], np.ones(len(has_lp), dtype=bool))}
    if "logprob" in names and has_lp.sum() >= MIN_ROWS:
        out["with_logprob"] = (list(names), has_lp)
    return out


def _shipped_scores(
    x: np.ndarray, names: Sequence[str], mine: ModelCombiners, position: str, has_lp: np.ndarray
) -> np.ndarray:
    """The shipped combiners' probabilities for the fitting rows (their features out of fold): the search then
    chooses thresholds on exactly the function the cascade computes. A row with a log-probability is scored by
    the ``with_logprob`` combiner when there is one."""
    out = np.empty(len(has_lp))
    everything = np.ones(len(has_lp), dtype=bool)
    with_lp, without = mine.with_logprob.get(position), mine.without_logprob.get(position)
    for chosen, rows in ((with_lp, has_lp), (without, ~has_lp if with_lp is not None else everything)):
        if chosen is None or not rows.any():
            continue
        cols = [list(names).index(c) for c in chosen.features]
        out[rows] = chosen.apply_many([dict(zip(chosen.features, r, strict=True)) for r in x[rows][:, cols]])
    return out


def _describe(chosen: Selection) -> dict[str, Any]:
    return {
        "kept": chosen.features,
        "oof_auroc": round(chosen.auroc, 4),
        "alone": chosen.alone,
        "chance": chosen.chance,
    }


def score_table(
    ids: Sequence[str],
    rows: Sequence[Record],
    models: Sequence[str],
    combiners: Mapping[str, ModelCombiners],
    text: Mapping[tuple[str, str], float] | None,
    prior: Mapping[tuple[str, str], float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(first, after)`` as in :class:`CombinedScores`, from fitted combiners (the test split's table: what
    the shipped scorer computes for each row at each position)."""
    record = {(r.query_id, r.model): r for r in rows}
    n, k = len(ids), len(models)
    first, after = np.zeros((n, k)), np.zeros((n, k, k))
    for j, m in enumerate(models):
        features = _first_features(ids, record, m, text, prior)
        has_lp = np.array([not math.isnan(f["logprob"]) for f in features])
        for position in ("first", "after"):
            for flag in (True, False):
                chosen = combiners[m].pick(position, flag)
                rows_here = np.flatnonzero(has_lp == flag)
                if chosen is None or rows_here.size == 0:
                    continue
                if position == "first":
                    first[rows_here, j] = chosen.apply_many([features[i] for i in rows_here])
                    continue
                for p, other in enumerate(models):
                    if p == j:
                        continue
                    batch = [
                        {
                            **features[int(i)],
                            "agree": agreement(record[(ids[int(i)], m)].answer, record[(ids[int(i)], other)].answer),
                        }
                        for i in rows_here
                    ]
                    after[rows_here, p, j] = chosen.apply_many(batch)
        after[:, j, j] = first[:, j]
    return first, after


def _first_features(
    ids: Sequence[str],
    record: Mapping[tuple[str, str], Record],
    model: str,
    text: Mapping[tuple[str, str], float] | None,
    prior: Mapping[tuple[str, str], float] | None,
) -> list[dict[str, float]]:
    """Each query's features for ``model``'s answer, before any agreement is known."""
    out = []
    for q in ids:
        r = record[(q, model)]
        out.append(
            raw_features(
                text=None if text is None else text.get((q, model)),
                logprob=r.logprob,
                output_tokens=r.output_tokens,
                answer=r.answer,
                prior=None if prior is None else prior.get((q, model)),
                previous=None,
            )
        )
    return out
