"""benchmarks/peers.py on a hand-built dataset: the JSON keys, and exact figures of the simple methods.

Two fake models, ``small`` (cost 1 per query) and ``big`` (cost 12), with a recorded ``logprob`` per row.
The default fit and the MiniLM encoder are injected fakes, so the whole run takes well under a second.

Test split (5 queries; ``p`` is ``exp(logprob)`` of small's answer)::

    query  small  p     big
    t0     ok     0.95  ok
    t1     wrong  0.05  ok
    t2     ok     0.95  ok
    t3     wrong  0.05  ok
    t4     wrong  0.95  wrong

Every threshold chosen on train lies strictly between 0.05 and 0.95 (train's small scores are 0.1 to 0.9),
so each small -> big chain of the log-probability cascade accepts t0, t2, t4 from small and sends t1, t3
to big: accuracy 4/5 at (5 * 1 + 2 * 12) / 5 = 5.8 per query.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import peers
from shared_scorer.fitting.bench import headline

TRAIN = [  # (query id, small correct, small p, big correct)
    ("q0", 1, 0.9, 1),
    ("q1", 0, 0.15, 1),
    ("q2", 1, 0.85, 0),
    ("q3", 0, 0.3, 1),
    ("q4", 1, 0.9, 1),
    ("q5", 0, 0.1, 1),
]
TEST = [
    ("t0", 1, 0.95, 1),
    ("t1", 0, 0.05, 1),
    ("t2", 1, 0.95, 1),
    ("t3", 0, 0.05, 1),
    ("t4", 0, 0.95, 0),
]


def write_split(path: Path, rows: Sequence[tuple[str, int, float, int]]) -> Path:
    lines = []
    for qid, small_ok, p, big_ok in rows:
        for model, ok, prob, cost in (("small", small_ok, p, 1.0), ("big", big_ok, 0.5, 12.0)):
            lines.append(
                {
                    "query_id": qid,
                    "query": f"question {qid}?",
                    "model": model,
                    "answer": "right" if ok else "wrong",
                    "correct": float(ok),
                    "cost_usd": cost,
                    "input_tokens": 10,
                    "output_tokens": 1,
                    "logprob": math.log(prob),
                }
            )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    """A deterministic 3-dimensional 'embedding': whether the text says 'right', its length, a constant."""
    return np.array([[float("right" in t), len(t) / 20.0, 1.0] for t in texts])


class FakeBench:
    """Stands in for ``bench``: records each FitConfig and returns a one-point test frontier."""

    def __init__(self) -> None:
        self.configs: list[Any] = []

    def __call__(self, train: Sequence[Any], test: Sequence[Any], out: Path, config: Any) -> dict[str, Any]:
        self.configs.append(config)
        point = {"chain": ["small", "big"], "thresholds": [0.5], "accuracy": 0.8, "cost_per_query": 3.0}
        return {"frontier": [point], "out_of_fold_auroc": {"small": 0.9, "big": 0.5}}


@pytest.fixture
def report(tmp_path: Path) -> tuple[dict[str, Any], FakeBench, Path]:
    train = write_split(tmp_path / "train.jsonl", TRAIN)
    test = write_split(tmp_path / "test.jsonl", TEST)
    fake = FakeBench()
    out = tmp_path / "peers.json"
    plot = tmp_path / "peers.png"
    argv = ["--train", str(train), "--test", str(test), "--json", str(out), "--plot", str(plot)]
    assert peers.main(argv, fit_bench=fake, embed=fake_embed) == 0
    return json.loads(out.read_text()), fake, plot


def test_headline_reports_savings_within_one_point() -> None:
    best = {"model": "big", "accuracy": 0.70, "cost_per_query": 0.10}
    frontier = [
        {"accuracy": 0.50, "cost_per_query": 0.005},
        {"accuracy": 0.695, "cost_per_query": 0.03},
        {"accuracy": 0.71, "cost_per_query": 0.06},
    ]
    h = headline(frontier, best)
    assert h["savings_within_one_point"] == pytest.approx(1 - 0.03 / 0.10)
    assert h["savings_at_matched_accuracy"] == pytest.approx(1 - 0.06 / 0.10)
    assert headline(frontier[:1], best)["savings_within_one_point"] is None


def test_report_keys_and_default(report: tuple[dict[str, Any], FakeBench, Path]) -> None:
    data, _, plot = report
    methods = data["methods"]
    assert data["default"] == "frugal-default"
    assert data["default"] in methods
    assert set(methods) == {
        "frugal-default",
        "frugalgpt-reference",
        "logprob-threshold",
        "routellm-router",
        "naive-cascade",
        "single:small",
        "single:big",
        "oracle",
    }
    for name, method in methods.items():
        h = method["headline"]
        assert set(h["accuracy_at_cost_fraction"]) == {"0.1", "0.2", "0.5"}, name
        assert "savings_at_matched_accuracy" in h and "savings_within_one_point" in h, name
        assert method["frontier"], name
        for point in method["frontier"]:
            assert 0.0 <= point["accuracy"] <= 1.0 and point["cost_per_query"] >= 0.0, name
    assert data["best_single"] == {"model": "big", "accuracy": 0.8, "cost_per_query": 12.0}
    assert data["test_queries"] == 5 and data["train_queries"] == 6
    assert plot.is_file() and plot.stat().st_size > 0


def test_simple_methods_exact_figures(report: tuple[dict[str, Any], FakeBench, Path]) -> None:
    methods = report[0]["methods"]
    small = methods["single:small"]
    assert [(p["accuracy"], p["cost_per_query"]) for p in small["frontier"]] == [(0.4, 1.0)]
    assert small["headline"]["accuracy_at_cost_fraction"] == {"0.1": 0.4, "0.2": 0.4, "0.5": 0.4}
    assert small["headline"]["savings_at_matched_accuracy"] is None
    big = methods["single:big"]["headline"]
    assert big["accuracy_at_cost_fraction"] == {"0.1": None, "0.2": None, "0.5": None}
    assert big["savings_at_matched_accuracy"] == 0.0 and big["savings_within_one_point"] == 0.0

    oracle = methods["oracle"]  # t0, t2 small; t1, t3 big; t4 nobody: the cheapest (small)
    assert [(p["accuracy"], p["cost_per_query"]) for p in oracle["frontier"]] == [(0.8, pytest.approx(27 / 5))]
    assert oracle["headline"]["accuracy_at_cost_fraction"] == {"0.1": None, "0.2": None, "0.5": 0.8}
    assert oracle["headline"]["savings_at_matched_accuracy"] == pytest.approx(1 - 5.4 / 12)

    lp = methods["logprob-threshold"]
    figures = sorted({(p["accuracy"], round(p["cost_per_query"], 12)) for p in lp["frontier"]})
    assert figures == [(0.4, 1.0), (0.8, 5.8)]
    assert all(0.05 < t < 0.95 for p in lp["frontier"] for t in p["thresholds"])
    assert lp["headline"]["accuracy_at_cost_fraction"] == {"0.1": 0.4, "0.2": 0.4, "0.5": 0.8}
    assert lp["headline"]["savings_at_matched_accuracy"] == pytest.approx(1 - 5.8 / 12)
    assert lp["headline"]["savings_within_one_point"] == pytest.approx(1 - 5.8 / 12)


def test_default_and_reference_configs(report: tuple[dict[str, Any], FakeBench, Path]) -> None:
    data, fake, _ = report
    default, reference = fake.configs
    assert default.candidates == "both" and default.caps == "auto"
    assert reference.candidates == "grid" and reference.grid_points == 40 and reference.caps == "none"
    assert reference.top.usage_signals is False
    assert getattr(reference, "signals", ()) == () and getattr(reference, "router", False) is False
    # the injected bench's test frontier, with the headline measured against the test's best single model
    h = data["methods"]["frugal-default"]["headline"]
    assert h["accuracy_at_cost_fraction"] == {"0.1": None, "0.2": None, "0.5": 0.8}
    assert h["savings_at_matched_accuracy"] == pytest.approx(1 - 3.0 / 12)


def test_logprob_method_is_skipped_without_logprobs(tmp_path: Path) -> None:
    train = write_split(tmp_path / "train.jsonl", TRAIN)
    test = write_split(tmp_path / "test.jsonl", TEST)
    for path in (train, test):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "logprob"}) + "\n" for r in rows))
    out = tmp_path / "peers.json"
    argv = ["--train", str(train), "--test", str(test), "--json", str(out)]
    assert peers.main(argv, fit_bench=FakeBench(), embed=fake_embed) == 0
    data = json.loads(out.read_text())
    assert "logprob-threshold" not in data["methods"]
    assert "logprob-threshold" in data["skipped"]
