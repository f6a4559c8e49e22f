"""Every signal a stage gives (issue 13): combiners, honest selection, conditional scores, router gates."""

from __future__ import annotations

import math
import warnings
from decimal import Decimal

import numpy as np
import pytest

from shared_scorer.cascade import Cascade
from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.combine import (
    auroc,
    combine,
    fit_logistic,
    score_table,
    select,
    within_fold_auroc,
)
from shared_scorer.fitting.crossfit import fold_of
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.routing import add_router_columns, conditional_after
from shared_scorer.fitting.search import Table, brute_force_points, candidate_thresholds, evaluate_chain, search
from shared_scorer.outcome import StageOutput
from shared_scorer.scoring.combiner import Combiner, ModelCombiners, agreement, combined_score, final_answer
from shared_scorer.strategy import gated_name, split_cap, split_gate

from .test_optimize import brute_frontier, flat, random_table


def test_final_answers_and_agreement() -> None:
    assert [final_answer(t) for t in ("D", " (a) ", "Answer: C", "#### 1,200", "\\boxed{3/4}", "Paris")] == [
        "D",
        "A",
        "C",
        "1200",
        "3/4",
        None,
    ]
    assert agreement("#### 7", "the total is 7.0\n#### 7.0") == 1.0
    assert agreement("B", "A") == 0.0
    assert agreement("Paris, France", "paris") == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))
    assert agreement("", "") == 1.0 and agreement("x", "") == 0.0


def test_combiner_json_and_missing_features() -> None:
    c = Combiner(("logprob", "agree"), (1.0, 2.0), 0.5, (-1.0, 0.5), (2.0, 0.25))
    assert Combiner.from_json(c.to_json()) == c
    # logprob -1 and agree 0.5 are the means: z = 0, p = sigmoid(0.5)
    assert c.apply({"logprob": -1.0, "agree": 0.5}) == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert c.apply({"logprob": math.nan, "agree": 0.75}) == pytest.approx(1 / (1 + math.exp(-(0.5 + 2.0))))
    with pytest.raises(ValueError, match="bad combiner"):
        Combiner.from_json({"features": ["magic"], "weights": [1.0], "bias": 0, "mean": [0], "scale": [1]})


def test_a_request_without_logprob_uses_the_combiner_fitted_without_it() -> None:
    with_lp = Combiner(("logprob",), (4.0,), 0.0, (-1.0,), (1.0,))
    without = Combiner((), (), math.log(0.3 / 0.7))
    combiners = ModelCombiners({"first": with_lp}, {"first": without})
    kw = dict(text=None, output_tokens=None, answer="B", prior=None, previous=None)
    assert combined_score(combiners, logprob=None, **kw) == pytest.approx(0.3)
    assert combined_score(combiners, logprob=0.0, **kw) == pytest.approx(1 / (1 + math.exp(-4.0)))


def test_logistic_regression_recovers_a_clear_signal() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 1))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0)))).astype(float)
    w, b = fit_logistic(x, y, ridge=1e-6)
    assert w[0] == pytest.approx(2.0, abs=0.25) and b == pytest.approx(-1.0, abs=0.2)


def test_auroc_is_exact_with_ties() -> None:
    assert auroc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.5, 0.5])) == pytest.approx(0.875)
    assert math.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_pooled_out_of_fold_scores_fake_an_anti_signal_that_within_fold_auroc_does_not() -> None:
    """The artifact of issue 13: folds with shifted intercepts (a fold trained on easier queries predicts
    higher for its held-out queries, which are harder) make a signal-free score anti-correlated when pooled."""
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1, 2], 100)
    labels = np.concatenate([rng.random(100) < rate for rate in (0.9, 0.6, 0.3)]).astype(float)
    # each fold's "model" predicts the base rate of the *other* folds, plus noise carrying no signal
    offset = {0: 0.45, 1: 0.6, 2: 0.75}
    scores = np.array([offset[g] for g in groups]) + rng.normal(scale=0.01, size=300)
    assert auroc(labels, scores) < 0.3
    assert within_fold_auroc(labels, scores, groups) == pytest.approx(0.5, abs=0.1)


def test_selection_keeps_informative_signals_and_drops_noise() -> None:
    rng = np.random.default_rng(2)
    n = 600
    y = (rng.random(n) < 0.6).astype(float)
    signal = y + rng.normal(scale=0.8, size=n)
    noise = rng.normal(size=n)
    groups = np.arange(n) % 3
    chosen = select(np.column_stack([noise, signal]), y, groups, ["tokens", "logprob"])
    assert chosen.features == ["logprob"] and not chosen.chance
    assert chosen.alone["logprob"] > 0.7 and abs(chosen.alone["tokens"] - 0.5) < 0.06


def test_a_signal_free_stage_is_a_constant_and_flagged() -> None:
    rng = np.random.default_rng(3)
    n = 300
    y = (rng.random(n) < 0.5).astype(float)
    chosen = select(rng.normal(size=(n, 2)), y, np.arange(n) % 3, ["tokens", "chars"])
    assert chosen.features == [] and chosen.chance


def _rows(n: int = 240, seed: int = 4) -> tuple[list[str], list[Record]]:
    """Two models on multiple-choice letters: 'cheap' is right when its logprob is high; 'big' mostly right."""
    rng = np.random.default_rng(seed)
    rows, ids = [], []
    for i in range(n):
        q = f"q{i}"
        ids.append(q)
        gold = "ABCD"[i % 4]
        confident = rng.random() < 0.6
        cheap_right = rng.random() < (0.9 if confident else 0.3)
        cheap = gold if cheap_right else "ABCD"[(i + 1) % 4]
        big_right = rng.random() < 0.85
        big = gold if big_right else "ABCD"[(i + 2) % 4]
        lp = -0.05 if confident else -1.5
        rows.append(
            Record(q, f"question {i}", "cheap", cheap, float(cheap_right), 0.001, logprob=lp + rng.normal(0, 0.02))
        )
        rows.append(Record(q, f"question {i}", "big", big, float(big_right), 0.01, logprob=-0.1))
    return ids, rows


def test_combine_scores_conditionally_and_matches_the_shipped_combiners() -> None:
    ids, rows = _rows()
    fold = fold_of(ids, 3, 0)
    combined = combine(ids, rows, ["cheap", "big"], fold, None, None)
    report = combined.report["cheap"]
    assert report["first/with_logprob"]["kept"][0] == "logprob"
    assert report["first/with_logprob"]["oof_auroc"] > 0.75
    assert "agree" in report["after/without_logprob"]["kept"]
    # after[i, m, m] is the first-position score; after[i, big, cheap] differs (agreement is known)
    assert np.array_equal(combined.after[:, 0, 0], combined.first[:, 0])
    assert not np.allclose(combined.after[:, 1, 0], combined.first[:, 0])
    # the shipped combiners applied to the same rows are what score_table computes (a test split's table)
    first, after = score_table(ids, rows, ["cheap", "big"], combined.combiners, None, None)
    row = next(r for r in rows if r.query_id == ids[5] and r.model == "cheap")
    expected = combined_score(
        combined.combiners["cheap"],
        text=None,
        logprob=row.logprob,
        output_tokens=None,
        answer=row.answer,
        prior=None,
        previous=None,
    )
    assert first[5, 0] == pytest.approx(expected)
    big = next(r for r in rows if r.query_id == ids[5] and r.model == "big")
    expected_after = combined_score(
        combined.combiners["cheap"],
        text=None,
        logprob=row.logprob,
        output_tokens=None,
        answer=row.answer,
        prior=None,
        previous=big.answer,
    )
    assert after[5, 1, 0] == pytest.approx(expected_after)


@pytest.mark.parametrize("seed", range(6))
def test_search_with_conditional_scores_and_gated_columns_equals_brute_force(seed: int) -> None:
    plain = random_table(seed, n=11 + seed, models=3)
    rng = np.random.default_rng(50 + seed)
    after = rng.integers(0, 6, size=(plain.n, 3, 3)) / 5
    for m in range(3):
        after[:, m, m] = plain.scores[:, m]
    gated_valid = rng.random(plain.n) < 0.6
    table = Table.of(
        [*plain.models, "m0|prior>=0.5000"],
        np.column_stack([plain.scores, plain.scores[:, 0]]),
        np.column_stack([plain.correct, plain.correct[:, 0] * gated_valid]),
        np.column_stack([plain.costs, plain.costs[:, 0] * gated_valid]),
        valid=np.column_stack([np.ones((plain.n, 3), dtype=bool), gated_valid]),
        base=["m0", "m1", "m2", "m0"],
        first_only=[3],
    )
    table = conditional_after(table, ["m0", "m1", "m2"], plain.scores, after)
    candidates = [candidate_thresholds(np.linspace(0, 1, 6), "quantiles") for _ in range(4)]
    frontier = search(table, max_depth=3, candidates=candidates)
    assert flat(frontier) == pytest.approx(brute_frontier(table, 3, candidates), abs=1e-12)
    brute = {(p[0], p[1]): (p[2], p[3]) for p in brute_force_points(table, 3, candidates)}
    for point in frontier:
        assert brute[(point.chain, point.thresholds)] == pytest.approx((point.accuracy, point.cost), abs=1e-12)
        assert all(not name.endswith("0.5000") for name in point.chain[1:])
        assert point.chain != ("m0|prior>=0.5000",)


def test_router_columns_skip_queries_at_no_cost() -> None:
    table = Table.of(
        ["a", "b"], np.full((4, 2), 0.5), np.array([[1, 1], [0, 1], [1, 0], [0, 1]]), np.array([[1, 10]] * 4)
    )
    prior = np.array([[0.9, 0.5], [0.1, 0.5], [0.8, 0.5], [0.2, 0.5]])
    gated, gates = add_router_columns(table, ["a", "b"], prior, quantiles=(0.5,))
    assert gates == {"a": [0.5]}  # b's prior is constant: no gate splits it
    assert gated.models == ("a", "b", "a|prior>=0.5000") and gated.first_only == frozenset({2})
    # queries 1 and 3 skip a: they pay only b (10), and b answers them (both right)
    figures = evaluate_chain(gated, ["a|prior>=0.5000", "b"], [0.4])
    assert (figures.accuracy, figures.cost) == (1.0, (1 + 10 + 1 + 10) / 4)
    again, _ = add_router_columns(table, ["a", "b"], prior, given={"a": [0.5]})
    assert again.models == gated.models


def test_gated_names_round_trip_with_caps() -> None:
    name = gated_name("gpt-4o-mini@300", 0.25)
    assert split_gate(name) == ("gpt-4o-mini@300", 0.25)
    assert split_cap(name) == ("gpt-4o-mini", 300)


def _stage(text: str) -> object:
    return lambda: StageOutput(text, 10, 1)


def test_the_cascade_routes_past_a_gated_stage_at_no_cost_on_every_driver() -> None:
    import asyncio

    calls: list[str] = []

    def stage(name: str) -> object:
        def call() -> StageOutput:
            calls.append(name)
            return StageOutput(f"{name} says 4", 10, 1)

        return call

    async def astage_of(name: str) -> StageOutput:
        calls.append(name)
        return StageOutput(f"{name} says 4", 10, 1)

    predicted = {"2+2?": [0.2, None], "3+3?": [0.9, None]}
    cascade = Cascade(
        ["small", "big"],
        [0.5],
        lambda q, a: 0.9,
        prices={"small": (1, 2), "big": (10, 20)},
        gates=[0.5, None],
        router=lambda q: predicted[q],
    )
    routed = cascade.run("2+2?", [stage("small"), stage("big")])
    assert calls == ["big"] and routed.model == "big"
    assert [a.status for a in routed.attempts] == ["routed_past", "accepted"]
    assert routed.attempts[0].cost_usd == Decimal(0) and routed.attempts[0].score == 0.2
    assert routed.cost_usd == Decimal("0.00012")
    calls.clear()
    kept = cascade.run("3+3?", [stage("small"), stage("big")])
    assert calls == ["small"] and kept.cost_usd == Decimal("0.000012")
    calls.clear()
    result = asyncio.run(cascade.arun("2+2?", [lambda: astage_of("small"), lambda: astage_of("big")]))
    assert calls == ["big"] and result.attempts[0].status == "routed_past"
    calls.clear()
    streamed = [x for x in cascade.stream("2+2?", [stage("small"), stage("big")], None) if not isinstance(x, str)]
    assert calls == ["big"] and streamed[-1].attempts[0].status == "routed_past"


def test_a_failing_router_skips_nothing_and_gates_are_checked() -> None:
    def broken(query: str) -> list[float]:
        raise RuntimeError("embedder gone")

    cascade = Cascade(
        ["small", "big"],
        [0.5],
        lambda q, a: 0.9,
        prices={"small": (1, 2), "big": (10, 20)},
        gates=[0.5, None],
        router=broken,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cascade.run("2+2?", [_stage("4"), _stage("4")])
    assert result.model == "small"
    with pytest.raises(ConfigurationError, match="need a router"):
        Cascade(["a", "b"], [0.5], lambda q, a: 1.0, prices={"a": (1, 1), "b": (1, 1)}, gates=[0.5, None])
    with pytest.raises(ConfigurationError, match=r"gates\[0\]"):
        Cascade(
            ["a", "b"],
            [0.5],
            lambda q, a: 1.0,
            prices={"a": (1, 1), "b": (1, 1)},
            gates=[1.5, None],
            router=lambda q: [0.1, 0.1],
        )


def test_the_query_prior_embeds_each_query_once_and_round_trips() -> None:
    from shared_scorer.scoring.prior import QueryPrior, cross_fitted_prior, fit_prior

    class Counting:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def embed(self, texts: list[str]) -> np.ndarray:
            self.seen.extend(texts)
            return np.array([[len(t) / 10, 1.0] for t in texts])

    prior = QueryPrior({"m": ([1.0, 0.0], -1.0)}, embedder=Counting())
    first = prior.predict_many(["ab", "abcdef", "ab"])
    assert prior.embedder.seen == ["ab", "abcdef"]
    assert prior.predict("abcdef") == first[1] and prior.embedder.seen == ["ab", "abcdef"]
    assert first[0]["m"] == pytest.approx(1 / (1 + math.exp(-(0.2 - 1.0))))
    assert QueryPrior.from_json(prior.to_json()).weights == prior.weights
    x = np.array([[0.0], [0.1], [0.9], [1.0]] * 10)
    y = {"m": np.array([0, 0, 1, 1] * 10, dtype=float), "always": np.ones(40)}
    fitted = fit_prior(x, y)
    p = fitted.predict_vectors(np.array([[0.0], [1.0]]))
    assert p["m"][0] < 0.5 < p["m"][1] and p["always"] == pytest.approx([0.999, 0.999])
    oof = cross_fitted_prior(x, y, [i % 2 for i in range(40)])
    assert oof["m"].shape == (40,) and (oof["m"][2::4] > oof["m"][0::4]).all()


def test_robust_selection_holds_on_every_fold_and_falls_back_to_the_best_affordable_single_model() -> None:
    from shared_scorer.fitting.robust import robust_select

    # a: right on every query of fold 0 and one of fold 1 (4/6, cost 1); b: 2/3 on each fold (4/6, cost 3)
    table = Table.of(
        ["a", "b"],
        np.full((6, 2), 0.9),
        np.array([[1, 1], [1, 1], [1, 0], [1, 1], [0, 1], [0, 0]]),
        np.array([[1, 3]] * 6),
    )
    groups = np.array([0, 0, 0, 1, 1, 1])
    frontier = search(table, max_depth=2, candidates="quantiles")
    assert [p.chain for p in frontier] == [("a",)]  # b alone is dominated in sample: same accuracy, dearer
    assert frontier.select(budget=3.0).chain == ("a",)
    chosen = robust_select(frontier, table, groups, budget=3.0)
    assert chosen.chain == ("b",) and (chosen.accuracy, chosen.cost) == pytest.approx((4 / 6, 3.0))
    assert robust_select(frontier, table, groups, budget=2.0).chain == ("a",)  # b is not affordable
