"""``frugal advise`` on a hand-built table: 4 models x 12 queries per split, label scores (a perfect scorer) or a
fixed scorer through the real cross-fitted ``fit``, so every figure is exact.

Per split, model ``m`` answers queries ``0 .. RIGHT[m]-1`` right and costs ``COST[m]`` USD a query (recorded as
1,000,000 input tokens, so a ``--price m=IN,0`` re-prices it to IN a query). ``big`` is the best single model
(10/12 at $10): the budgets are $1, $2, $5 and $10 a query. ``dud`` is right only where ``tiny`` is, and dearer.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from shared_scorer.cli import main
from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.advise import advise, enough_depth
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.fit import FitConfig

COST = {"tiny": 1, "mid": 6, "big": 10, "dud": 3}
RIGHT = {"tiny": 4, "mid": 8, "big": 10, "dud": 2}


def split(prefix: str) -> list[Record]:
    return [
        Record(f"{prefix}{i}", f"question {prefix}{i}?", m, "a", float(i < RIGHT[m]), float(c), 1_000_000, 0)
        for i in range(12)
        for m, c in COST.items()
    ]


def candidate(right: int, cost: float) -> list[Record]:
    return [
        Record(f"{p}{i}", f"question {p}{i}?", "new", "a", float(i < right), cost, 1_000_000, 0)
        for p in "ab"
        for i in range(12)
    ]


TRAIN, TEST = split("a"), split("b")


def curve(report: dict[str, Any]) -> dict[int, dict[str, float | None]]:
    return {d["max_depth"]: d["accuracy_at_cost_fraction"] for d in report["depth"]}


def approx(value: Any) -> Any:
    return pytest.approx(value, abs=1e-12)


def test_depth_curve_and_the_depth_after_which_gains_stop() -> None:
    report = advise(TRAIN, TEST, None, oracle=True)
    assert report["best_single"]["model"] == "big" and report["best_single"]["test_cost_per_query"] == 10.0
    # depth 1: tiny (4/12) at $1 and $2, still tiny at $5 (mid costs 6), big at $10
    assert curve(report)[1] == approx({"0.1": 4 / 12, "0.2": 4 / 12, "0.5": 4 / 12, "1.0": 10 / 12})
    # depth 2: tiny -> mid costs 1 + 8/12 * 6 = $5: 8/12 at half big's cost; deeper chains add nothing
    for depth in (2, 3, 4):
        assert curve(report)[depth] == approx({"0.1": 4 / 12, "0.2": 4 / 12, "0.5": 8 / 12, "1.0": 10 / 12})
    matched = [d["cost_to_match_best_single_usd"] for d in report["depth"]]
    assert matched == approx([10.0, 1 + 8 / 12 * 10, 1 + 8 / 12 * 10, 1 + 8 / 12 * 10])  # tiny -> big
    assert report["enough_depth"] == 2
    assert [d["search"] for d in report["depth"]] == ["fit", "fit", "fit", "uncapped, 6-point grid"]
    assert [d["max_depth"] for d in advise(TRAIN, TEST, None, oracle=True, max_depth=2)["depth"]] == [1, 2]


def test_enough_depth_needs_every_deeper_curve_within_one_point() -> None:
    rows = [{"max_depth": k, "accuracy_at_cost_fraction": {"0.1": a}} for k, a in ((1, 0.5), (2, 0.505), (3, 0.52))]
    assert enough_depth(rows) == 3  # 3 beats 1 by 2 points although 2 beats 1 by half a point
    rows[2]["accuracy_at_cost_fraction"]["0.1"] = None  # nothing within the budget counts as 0
    assert enough_depth(rows) == 1


def test_leave_one_out_ranks_models_and_names_the_one_to_drop() -> None:
    report = advise(TRAIN, TEST, None, oracle=True)
    ranked = {m["model"]: m["value"] for m in report["models"]}
    assert [m["model"] for m in report["models"]] == ["tiny", "mid", "big", "dud"]
    # without tiny nothing fits $1 or $2, dud alone (2/12) at $5, mid -> big ($6 + 4/12 * 10) matches big
    assert ranked["tiny"]["accuracy_loss_at_cost_fraction"] == approx(
        {"0.1": 4 / 12, "0.2": 4 / 12, "0.5": 6 / 12, "1.0": 0.0}
    )
    assert ranked["tiny"]["score"] == approx(14 / 48)
    assert ranked["tiny"]["cost_to_match_best_single_usd"] == approx(6 + 4 / 12 * 10)
    assert ranked["tiny"]["extra_cost_to_match_best_single_usd"] == approx(6 + 4 / 12 * 10 - (1 + 8 / 12 * 10))
    assert ranked["mid"]["accuracy_loss_at_cost_fraction"] == approx({"0.1": 0, "0.2": 0, "0.5": 4 / 12, "1.0": 0})
    # without big, 10/12 is out of reach: 8/12 at best
    assert ranked["big"]["accuracy_loss_at_cost_fraction"] == approx({"0.1": 0, "0.2": 0, "0.5": 0, "1.0": 2 / 12})
    assert ranked["big"]["cost_to_match_best_single_usd"] is None and ranked["big"]["match_unreachable_without"]
    assert ranked["dud"]["score"] == 0.0 and ranked["dud"]["extra_cost_to_match_best_single_usd"] == 0.0
    assert report["drop"] == ["dud"]
    assert [m["drop"] for m in report["models"]] == [False, False, False, True]


def test_a_price_what_if_reprices_tokens_and_changes_the_ranking() -> None:
    report = advise(TRAIN, TEST, None, oracle=True, overrides={"tiny": ("6", "0")})
    # tiny at $6 a query: nothing fits $1 or $2; dud is now the cheap stage, tiny is worth nothing
    assert curve(report)[1] == {"0.1": None, "0.2": None, "0.5": approx(2 / 12), "1.0": approx(10 / 12)}
    assert [m["model"] for m in report["models"]] == ["big", "dud", "mid", "tiny"]
    assert report["drop"] == ["tiny"] and report["ranking_changed"] is True
    assert report["prices"] == {"tiny": {"input_per_mtok": "6", "output_per_mtok": "0"}}
    assert [m["model"] for m in report["baseline"]["models"]] == ["tiny", "mid", "big", "dud"]
    assert report["baseline"]["drop"] == ["dud"]


def test_a_price_what_if_needs_token_counts_and_a_known_model() -> None:
    no_tokens = [Record(r.query_id, r.query, r.model, r.answer, r.correct, r.cost_usd) for r in TRAIN]
    with pytest.raises(ConfigurationError, match=r"^--price mid: 12 of its rows have no input_tokens/output_tokens"):
        advise(no_tokens, TEST, None, oracle=True, overrides={"mid": ("1", "1")})
    with pytest.raises(ConfigurationError, match=r"^--price gpt-x: no such model in the data"):
        advise(TRAIN, TEST, None, oracle=True, overrides={"gpt-x": ("1", "1")})


def test_a_candidate_is_valued_with_a_seeded_bootstrap() -> None:
    good = advise(TRAIN, TEST, None, oracle=True, candidate=candidate(8, 2.0))["candidate"]
    assert (good["model"], good["queries"], good["resamples"], good["seed"]) == ("new", 24, 200, 0)
    # as accurate as mid at a third of its price: worth collecting
    assert good["value"] == approx(0.125) and good["interval"] == approx([0.0625, 0.1875])
    assert good["decision"] == "collect"
    assert advise(TRAIN, TEST, None, oracle=True, candidate=candidate(8, 2.0))["candidate"] == good  # seeded
    useless = advise(TRAIN, TEST, None, oracle=True, candidate=candidate(2, 20.0))["candidate"]
    assert useless["value"] == 0.0 and useless["interval"] == [0.0, 0.0] and useless["decision"] == "don't collect"
    # the price what-if applies to the candidate too: at $0.5 a query it is worth more
    cheap = advise(TRAIN, TEST, None, oracle=True, candidate=candidate(8, 2.0), overrides={"new": ("0.5", "0")})
    assert cheap["candidate"]["value"] > good["value"] and cheap["baseline"]["candidate"] == good


class FixedScorer:
    """Scores every answer with its recorded label, whatever it was trained on (no network to train)."""

    def __init__(self, labels: dict[tuple[str, str], float]) -> None:
        self.labels = labels

    def score_batch(self, requests: Any) -> list[float]:
        return [self.labels[(r.query, r.model)] for r in requests]

    def save(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)


def test_the_fit_path_uses_the_cross_fitted_fit(tmp_path: Path) -> None:
    labels = {(r.query, r.model): r.correct for r in [*TRAIN, *TEST, *candidate(8, 2.0)]}
    trained: list[int] = []

    def train(records: Any, seed: int) -> FixedScorer:
        trained.append(len(records))
        return FixedScorer(labels)

    config = FitConfig(folds=2, caps="none")
    fitted = advise(TRAIN, TEST, tmp_path / "fit", config, train=train, candidate=candidate(8, 2.0))
    assert trained == [24, 24, 48]  # two folds of half the 48 train rows, then the final scorer on all
    assert (tmp_path / "fit" / "strategy.json").is_file() and fitted["scores"] == "cross-fitted"
    oracle = advise(TRAIN, TEST, None, oracle=True, candidate=candidate(8, 2.0))
    for key in ("depth", "models", "drop", "candidate", "enough_depth"):
        assert fitted[key] == oracle[key], key


def write(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_the_cli_writes_json_a_table_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    train, test = write(tmp_path / "train.jsonl", TRAIN), write(tmp_path / "test.jsonl", TEST)
    new = write(tmp_path / "new.jsonl", candidate(8, 2.0))
    out, png = tmp_path / "advise.json", tmp_path / "advise.png"
    argv = ["advise", "--train", str(train), "--test", str(test), "--json", str(out), "--plot", str(png)]
    assert main([*argv, "--scorer", "oracle", "--candidate", str(new), "--price", "tiny=6,0", "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert [d["max_depth"] for d in report["depth"]] == [1, 2, 3, 4]
    assert report["depth"][0]["accuracy_at_cost_fraction"] == {
        "0.1": None,
        "0.2": None,
        "0.5": approx(2 / 12),
        "1.0": approx(10 / 12),
    }
    assert [m["model"] for m in report["models"]] == ["big", "dud", "mid", "tiny"] and report["drop"] == ["tiny"]
    assert set(report["models"][0]["value"]) >= {
        "accuracy_loss_at_cost_fraction",
        "cost_to_match_best_single_usd",
        "score",
    }
    assert png.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "never worth calling (removal costs nothing): tiny" in text
    assert "candidate new on 24 queries: value +31.25 points [+21.88, +39.58] (95%, 200 resamples): collect" in text


@pytest.mark.parametrize("bad", ["tiny", "tiny=1", "=1,2", "tiny=1,-2", "tiny=a,b"])
def test_a_malformed_price_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["advise", "--train", "t", "--test", "t", "--json", "j", "--price", bad])
    assert exit_info.value.code == 2
    assert "expected model=IN,OUT" in capsys.readouterr().err


def test_a_price_given_twice_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, test = write(tmp_path / "train.jsonl", TRAIN), write(tmp_path / "test.jsonl", TEST)
    argv = ["advise", "--train", str(train), "--test", str(test), "--json", str(tmp_path / "a.json")]
    assert main([*argv, "--scorer", "oracle", "--price", "tiny=1,0", "--price", "tiny=2,0"]) == 2
    assert capsys.readouterr().err == "frugal advise: error: --price tiny is given twice\n"
