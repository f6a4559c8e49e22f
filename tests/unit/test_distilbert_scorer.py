"""DistilBertScorer on a tiny random backbone: training, split, seeds, save/load, errors, calibration."""

from __future__ import annotations

import argparse
import asyncio
import json
import math

import numpy as np
import pytest
import torch

from shared_scorer.cli.learn import add_train_scorer_parser
from shared_scorer.errors import CheckpointError, ScorerError
from shared_scorer.fitting.data import Record, fingerprint
from shared_scorer.scoring import DistilBertScorer, Scorer, ScoreRequest
from shared_scorer.scoring.encoding import PairEncoder, head_tail
from shared_scorer.scoring.training import (
    Calibrator,
    TrainConfig,
    auroc,
    expected_calibration_error,
    fit_calibrator,
    split_by_query,
)

MODELS = ("small-model", "big-model")


def make_rows(n_queries: int = 24) -> list[Record]:
    rows = []
    for i in range(n_queries):
        for j, model in enumerate(MODELS):
            good = (i + j) % 2 == 0
            answer = f"The answer is {i} for sure." if good else "I am not sure, I do not know."
            rows.append(Record(f"q{i}", f"What is number {i}?", model, answer, float(good), 0.001))
    return rows


ROWS = make_rows()
FAST = {"backbone": "tiny-random", "epochs": 2, "batch_size": 8, "max_length": 32, "progress": False, "num_threads": 1}
REQUESTS = [ScoreRequest(r.query, r.answer, model=r.model) for r in ROWS[:10]]


@pytest.fixture(scope="module")
def shared() -> DistilBertScorer:
    options = {**FAST, "epochs": 10}
    return DistilBertScorer.train(ROWS, TrainConfig(**options, freeze_layers=0, head_lr=3e-3, lr=1e-3))


def test_training_learns_and_reports_metrics(shared: DistilBertScorer) -> None:
    assert isinstance(shared, Scorer)
    assert shared.models == list(MODELS)
    for model in MODELS:
        figures = shared.metrics[model]
        assert figures["val_rows"] == 4  # 15% of 24 queries = 4 queries in validation
        assert 0.0 <= figures["val_ece"] <= 1.0
    scores = shared.score_batch([ScoreRequest(r.query, r.answer, model=r.model) for r in ROWS])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert auroc([r.correct for r in ROWS], scores) > 0.9


def test_split_by_query_has_no_overlap_and_is_seeded() -> None:
    train, val = split_by_query(ROWS, 0.25, seed=5)
    assert {r.query_id for r in train}.isdisjoint({r.query_id for r in val})
    assert len({r.query_id for r in val}) == 6 and len(train) + len(val) == len(ROWS)
    _, again_val = split_by_query(ROWS, 0.25, seed=5)
    assert [r.query_id for r in val] == [r.query_id for r in again_val]
    other = split_by_query(ROWS, 0.25, seed=6)[1]
    assert {r.query_id for r in other} != {r.query_id for r in val}


def test_same_seed_same_scores_and_global_rng_untouched() -> None:
    before = torch.random.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    a = DistilBertScorer.train(ROWS, TrainConfig(**FAST, seed=7, per_model=True))
    b = DistilBertScorer.train(ROWS, TrainConfig(**FAST, seed=7, per_model=True))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert np.array_equal(a.logits(REQUESTS), b.logits(REQUESTS))
    c = DistilBertScorer.train(ROWS, TrainConfig(**FAST, seed=8, per_model=True))
    assert not np.array_equal(a.logits(REQUESTS), c.logits(REQUESTS))
    assert sorted(a.nets) == sorted(MODELS)
    with pytest.raises(ScorerError, match="unknown-model"):
        a.score(ScoreRequest("q", "a", model="unknown-model"))


def test_save_load_round_trip(shared: DistilBertScorer, tmp_path) -> None:
    folder = shared.save(tmp_path / "ckpt")
    meta = json.loads((folder / "scorer.json").read_text())
    assert meta["models"] == list(MODELS) and meta["variant"] == "shared"
    assert meta["training_data_fingerprint"] == fingerprint(ROWS)
    assert meta["format_version"] == 1 and meta["library_version"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    loaded = DistilBertScorer.load(folder)
    assert loaded.score_batch(REQUESTS) == shared.score_batch(REQUESTS)
    # a shared scorer also rates a model it was not trained for, with the pooled calibrator
    assert 0.0 <= loaded.score(ScoreRequest("q", "a", model="new-model")) <= 1.0


def test_checkpoint_errors_name_the_file(shared: DistilBertScorer, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"scorer\.json: missing"):
        DistilBertScorer.load(tmp_path / "nothing")
    folder = shared.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not for"):
        DistilBertScorer.load(folder, expect_models=["other-model"])

    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        DistilBertScorer.load(folder)
    flipped = bytearray(original)
    flipped[-1] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256"):
        DistilBertScorer.load(folder)
    weights.write_bytes(original)

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dim": 64, "hidden_dim": 128}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not match config\.json"):
        DistilBertScorer.load(folder)
    (folder / "config.json").write_text(json.dumps(config))

    meta = json.loads((folder / "scorer.json").read_text())
    (folder / "scorer.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"scorer\.json: format_version 99"):
        DistilBertScorer.load(folder)
    (folder / "scorer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"scorer\.json: unreadable"):
        DistilBertScorer.load(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": "32"}, r"config\.json: field 'dim' must be a positive integer, got '32'"),
        ({"n_layers": 2.5}, r"config\.json: field 'n_layers' must be a positive integer, got 2\.5"),
        ({"dropout": "high"}, r"config\.json: field 'dropout' must be a number in \[0, 1\], got 'high'"),
        ({"activation": 7}, r"config\.json: field 'activation' must be one of"),
        ({"n_heads": 3}, r"config\.json: field 'dim' \(32\) must be a multiple of 'n_heads' \(3\)"),
        ({"sinusoidal_pos_embds": "no"}, r"config\.json: field 'sinusoidal_pos_embds' must be true or false"),
    ],
)
def test_config_with_wrong_types_names_file_and_field(
    shared: DistilBertScorer, tmp_path, change: dict, message: str
) -> None:
    folder = shared.save(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        DistilBertScorer.load(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": "384"}, r"config\.json: field 'hidden_size' must be a positive integer, got '384'"),
        ({"num_hidden_layers": None}, r"config\.json: field 'num_hidden_layers' must be a positive integer, got None"),
        ({"max_position_embeddings": "many"}, r"config\.json: a field has the wrong type"),
        ({"model_type": "gpt2"}, r"config\.json: model_type 'gpt2' is neither 'bert' nor 'distilbert'"),
    ],
)
def test_backbone_config_with_wrong_types_names_file_and_field(tmp_path, change: dict, message: str) -> None:
    from shared_scorer.scoring.backbone import load_backbone, minilm_path

    config = json.loads((minilm_path() / "config.json").read_text())  # a BERT config
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_backbone(str(tmp_path))


def test_tokenizer_files_are_required_and_hashed(shared: DistilBertScorer, tmp_path) -> None:
    folder = shared.save(tmp_path / "ckpt")
    meta = json.loads((folder / "scorer.json").read_text())
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(meta["tokenizer_sha256"])
    original = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").unlink()  # transformers would load a 5-token vocabulary from what is left
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: missing"):
        DistilBertScorer.load(folder)
    (folder / "tokenizer.json").write_bytes(original.replace(b'"[UNK]": 100', b'"[UNK]": 101', 1))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: SHA-256 differs"):
        DistilBertScorer.load(folder)
    # an older checkpoint without the tokenizer hashes still refuses a folder with no vocabulary file
    (folder / "tokenizer.json").unlink()
    (folder / "scorer.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "tokenizer_sha256"}))
    with pytest.raises(CheckpointError, match=r"no tokenizer vocabulary \(tokenizer\.json or vocab\.txt\)"):
        DistilBertScorer.load(folder)


@pytest.mark.parametrize("name", ["../../x.safetensors", "/tmp/x.safetensors", "sub/../../x.safetensors", 7])
def test_weights_outside_the_folder_are_refused(shared: DistilBertScorer, tmp_path, name: object) -> None:
    folder = shared.save(tmp_path / "a" / "b" / "ckpt")
    meta = json.loads((folder / "scorer.json").read_text())
    (folder / "scorer.json").write_text(json.dumps({**meta, "weights": {"": name}, "sha256": {str(name): "0"}}))
    with pytest.raises(
        CheckpointError,
        match=r"scorer\.json: field 'weights' names .* outside the checkpoint folder|"
        r"scorer\.json: field 'weights' must name files",
    ):
        DistilBertScorer.load(folder)


def test_a_symlink_escaping_the_folder_is_refused(shared: DistilBertScorer, tmp_path) -> None:
    folder = shared.save(tmp_path / "ckpt")
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)  # same bytes, same hash: still not inside the folder
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*outside the checkpoint folder"):
        DistilBertScorer.load(folder)


def test_ece_on_hand_made_example() -> None:
    # bin [0.1, 0.2): p=0.1,0.1 y=0,0 -> |0.1-0| ; bin [0.9,1.0]: p=0.9,1.0 y=1,0 -> |0.95-0.5|
    probs = [0.1, 0.1, 0.9, 1.0]
    labels = [0, 0, 1, 0]
    assert expected_calibration_error(labels, probs) == pytest.approx(0.5 * 0.1 + 0.5 * 0.45)
    assert expected_calibration_error([1, 0], [0.5, 0.5]) == pytest.approx(0.0)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_calibrators() -> None:
    z = np.array([-3.0, -1.0, 0.0, 1.0, 3.0] * 20)
    y = (z > 0).astype(float)
    iso = fit_calibrator("isotonic", z, y)
    assert iso.apply(np.array([-3.0, 3.0])).tolist() == [0.0, 1.0]
    platt = fit_calibrator("platt", z, y)
    assert platt.apply(np.array([3.0]))[0] > 0.95 and platt.apply(np.array([-3.0]))[0] < 0.05
    temp = fit_calibrator("temperature", z, y)
    assert temp.params["t"] < 1.0
    assert Calibrator.from_json(iso.to_json()) == iso
    assert Calibrator("none", {}).apply(np.array([0.0])).tolist() == [0.5]


def test_truncation_keeps_question_head_and_tail(shared: DistilBertScorer) -> None:
    assert head_tail(list(range(10)), 4) == [0, 1, 8, 9]
    assert head_tail(list(range(3)), 4) == [0, 1, 2]
    tok = shared.tokenizer
    encoder = PairEncoder(tok, max_length=32, model_aware=False)
    answer = "alpha beta gamma " + "filler " * 500 + "omega final verdict"
    (ids,) = encoder.encode_pairs(["who is it?"], [answer])
    assert len(ids) == 32
    text = tok.decode(ids)
    assert text.startswith("[CLS] who is it? [SEP] alpha beta gamma")
    assert text.endswith("omega final verdict [SEP]")
    aware = PairEncoder(tok, max_length=32, model_aware=True)
    assert tok.decode(aware.encode_pairs([aware.context("who?", "gpt-x")], ["yes"])[0]).startswith(
        "[CLS] gpt - x | who?"
    )


def test_int8_path(shared: DistilBertScorer) -> None:
    q8 = shared.quantized()
    assert q8.is_quantized
    small = np.array(q8.score_batch(REQUESTS))
    assert np.all((small >= 0) & (small <= 1))
    assert "DynamicQuantizedLinear" in repr(q8.nets[""])
    assert np.corrcoef(shared.logits(REQUESTS), q8.logits(REQUESTS))[0, 1] > 0.99
    with pytest.raises(Exception, match="quantize=True"):
        q8.save("unused")


def test_ascore_and_threads(shared: DistilBertScorer) -> None:
    shared.num_threads = 1
    before = torch.get_num_threads()
    value = asyncio.run(shared.ascore(REQUESTS[0]))
    assert value == shared.score(REQUESTS[0])
    assert torch.get_num_threads() == before
    shared.num_threads = None


def test_cli_train_scorer(tmp_path, capsys) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                {
                    "query_id": r.query_id,
                    "query": r.query,
                    "model": r.model,
                    "answer": r.answer,
                    "correct": r.correct,
                    "cost_usd": r.cost_usd,
                }
            )
            for r in ROWS
        )
    )
    parser = argparse.ArgumentParser()
    add_train_scorer_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "train-scorer",
            "--train",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--backbone",
            "tiny-random",
            "--epochs",
            "1",
            "--max-length",
            "32",
            "--per-model",
            "--models",
            "big-model",
            "--no-progress",
        ]
    )
    assert args.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variant"] == "per-model" and list(report["validation"]) == ["big-model"]
    assert DistilBertScorer.load(tmp_path / "out").models == ["big-model"]
