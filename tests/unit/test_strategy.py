"""Strategy files: round trip, clear errors for corrupt / other-version / incomplete files, select."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_scorer.errors import CheckpointError, ConfigurationError
from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

FRONTIER = Frontier(
    [
        FrontierPoint(("small",), (), accuracy=0.5, cost=0.001, reach=(1.0,)),
        FrontierPoint(("small", "big"), (0.7,), accuracy=0.65, cost=0.004, reach=(1.0, 0.3)),
        FrontierPoint(("small", "mid", "big"), (0.8, 0.6), accuracy=0.72, cost=0.02, reach=(1.0, 0.4, 0.2)),
        FrontierPoint(("big",), (), accuracy=0.74, cost=0.08, reach=(1.0,)),
    ]
)


def strategy(**options: object) -> Strategy:
    return Strategy.from_frontier(
        FRONTIER,
        scorer="scorer",
        data_fingerprint="f" * 64,
        prices={"small": {"input_per_mtok": "0.25", "output_per_mtok": "2"}},
        info={"folds": 3},
        **options,  # type: ignore[arg-type]
    )


def test_round_trip(tmp_path: Path) -> None:
    s = strategy(budget=0.01)
    assert (s.chain, s.thresholds, s.objective) == (("small", "big"), (0.7,), {"budget": 0.01})
    assert s.expected == {"accuracy": 0.65, "cost_per_query": 0.004}
    path = s.save(tmp_path)
    assert path == tmp_path / "strategy.json"
    loaded = Strategy.load(path)
    assert loaded == s
    assert loaded.frontier.points == FRONTIER.points
    assert loaded.scorer_path() == (tmp_path / "scorer").resolve()
    assert Strategy.load(tmp_path) == s  # a folder holding strategy.json
    assert loaded.models == ["small", "big", "mid"]


def test_select_moves_along_the_frontier_without_refitting() -> None:
    s = strategy()
    assert s.chain == ("big",) and s.objective == {}
    cheap = s.select(budget=0.0015)
    assert (cheap.chain, cheap.thresholds, cheap.objective) == (("small",), (), {"budget": 0.0015})
    target = s.select(target_accuracy=0.7)
    assert (target.chain, target.thresholds, target.expected["cost_per_query"]) == (
        ("small", "mid", "big"),
        (0.8, 0.6),
        0.02,
    )
    assert target.frontier is s.frontier and target.data_fingerprint == s.data_fingerprint
    with pytest.raises(ConfigurationError, match=r"cheapest costs 0\.001"):
        s.select(budget=0.0001)
    with pytest.raises(ConfigurationError, match=r"most accurate reaches 0\.74"):
        s.select(target_accuracy=0.9)


def edit(tmp_path: Path, change: object) -> Path:
    path = strategy().save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    if callable(change):
        change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), r"field 'version' is 2; this library reads version 1"),
        (lambda d: d.update(format="other"), r"field 'format' is 'other'"),
        (lambda d: d.pop("chain"), r"missing field 'chain'"),
        (lambda d: d.pop("frontier"), r"missing field 'frontier'"),
        (lambda d: d.pop("data_fingerprint"), r"missing field 'data_fingerprint'"),
        (lambda d: d.update(thresholds=[1.5]), r"field 'thresholds' must be 0 number"),
        (lambda d: d.update(scorer=3), r"field 'scorer' must be a JSON string"),
        (lambda d: d.update(scorer="/abs/scorer"), r"field 'scorer' must be a path relative"),
        (lambda d: d["frontier"][0].pop("accuracy"), r"field 'frontier': field 'accuracy'"),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path: Path, change: object, message: str) -> None:
    path = edit(tmp_path, change)
    with pytest.raises(CheckpointError, match=message) as info:
        Strategy.load(path)
    assert str(path) in str(info.value)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    path = strategy().save(tmp_path / "s.json")
    path.write_text(path.read_text()[:50])
    with pytest.raises(CheckpointError, match=r"s.json: corrupt JSON .* at line"):
        Strategy.load(path)
    with pytest.raises(CheckpointError, match="no such strategy file"):
        Strategy.load(tmp_path / "nothing.json")
    path.write_text("[]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        Strategy.load(path)
