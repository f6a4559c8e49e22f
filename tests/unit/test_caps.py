"""Output-token caps: names, automatic caps, the capped columns of a recorded table."""

from __future__ import annotations

import numpy as np
import pytest

from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.columns import add_capped_columns, auto_caps, choose_caps
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.search import Table, evaluate_chain
from shared_scorer.strategy import capped_name, split_cap


def rows() -> list[Record]:
    out = []
    for i, (small_out, big_out) in enumerate([(10, 100), (20, 5000), (30, 900)]):
        out.append(Record(f"q{i}", f"question {i}", "small", "a", 1.0 if i == 0 else 0.0, 0.0001, 10, small_out))
        big_cost = (10 * 2 + big_out * 12) / 1e6  # the big model's prices below: $2 / $12 per million tokens
        out.append(Record(f"q{i}", f"question {i}", "big", "b", 1.0, big_cost, 10, big_out))
    return out


def test_names_round_trip() -> None:
    assert split_cap(capped_name("gemini-3.1-pro-preview", 3000)) == ("gemini-3.1-pro-preview", 3000)
    assert split_cap("model@v2") == ("model@v2", None) and split_cap("m@0") == ("m@0", None)


def test_auto_and_given_caps() -> None:
    assert auto_caps([100] * 10) == []  # nothing would ever be cut
    assert auto_caps([120, 130, 5000], quantiles=(0.5,)) == [130]
    assert choose_caps(rows(), ["small", "big"], "none") == {}
    assert choose_caps(rows(), ["small", "big"], [500, 100, 500]) == {"small": [100, 500], "big": [100, 500]}
    # quantiles 0.5, 0.65, 0.8, 0.9, 0.95 of [10, 20, 30] and [100, 900, 5000], rounded up to 2 digits
    expected = {"small": [20, 23, 26, 28, 29], "big": [900, 2200, 3400, 4200, 4600]}
    assert choose_caps(rows(), ["small", "big"], "auto") == expected
    with pytest.raises(ConfigurationError, match="caps must be 'auto', 'none'"):
        choose_caps(rows(), ["small"], "some")


def test_capped_columns_exact_figures() -> None:
    ids = ["q0", "q1", "q2"]
    recs = rows()
    table = Table.of(
        ["small", "big"],
        np.array([[0.9, 0.5], [0.1, 0.5], [0.2, 0.5]]),
        np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]),
        np.array([[r.cost_usd for r in recs if r.query_id == q] for q in ids]),
    )
    capped, report = add_capped_columns(table, ids, recs, {"big": [1000]}, prices={"big": (2, 12)})
    assert capped.models == ("small", "big", "big@1000") and capped.base == ("small", "big", "big")
    assert report == {"caps": {"big": [1000]}, "skipped": {}}
    j = 2
    assert capped.valid[:, j].tolist() == [True, False, True]
    assert capped.correct[:, j].tolist() == [1.0, 0.0, 1.0]
    # q1's reply (5000 tokens) is cut at 1000: input + 1000 output tokens are paid
    assert capped.costs[:, j] == pytest.approx([0.00122, 0.01202, 0.01082])
    # small -> big@1000: q1 escalates to big@1000 and is cut there (wrong); q0 is accepted by small
    figures = evaluate_chain(capped, ["small", "big@1000"], [0.5])
    assert figures.accuracy == pytest.approx(2 / 3) and figures.reach == (1.0, 2 / 3)
    _, skipped = add_capped_columns(table, ids, recs, {"small": [15]}, prices=None)
    assert skipped["skipped"] == {"small": "no known output price (give one with --prices)"}
