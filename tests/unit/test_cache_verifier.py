"""The trainable pair verifier (tiny random backbone), its persistence, and the two cache commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared_scorer.cache import HashingEmbedder, Pair, PairVerifier
from shared_scorer.cache.verifier_training import VerifierConfig, train_verifier
from shared_scorer.cli import main
from shared_scorer.errors import CheckpointError

TOPICS = ["python", "paris", "the moon", "tax", "guitar", "coffee", "chess", "rain", "bitcoin", "yoga"]


def pairs(n: int = 160) -> list[Pair]:
    out = []
    for i in range(n):
        a, b = TOPICS[i % 10], TOPICS[(i * 3 + 1) % 10]
        if i % 2:
            out.append(Pair(f"How do I learn about {a}?", f"How can I learn about {a} {i}?", True))
        else:
            out.append(Pair(f"How do I learn about {a}?", f"Why is {b} so popular {i}?", False))
    return out


@pytest.fixture(scope="module")
def trained():
    config = VerifierConfig(backbone="tiny-random", epochs=1, batch_size=64, max_length=24, progress=False)
    return train_verifier(pairs(120), config, embedder=HashingEmbedder())


def test_training_reports_validation_figures_and_an_operating_point(trained):
    verifier, report = trained
    assert report["fit_pairs"] + report["val_pairs"] == 120 and report["val_pairs"] > 10
    point = report["operating_point"]
    assert verifier.threshold == point["threshold"] and verifier.min_similarity == point["min_similarity"]
    assert report["validation"]["pairs"] == report["val_pairs"]
    assert report["config"]["backbone"] == "tiny-random"


def test_save_and_load_round_trip_without_pickle(trained, tmp_path):
    verifier, _ = trained
    folder = verifier.save(tmp_path / "verifier")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer",
        "verifier.json",
    ]
    loaded = PairVerifier.load(folder)
    first, second = ["How do I learn about chess?", "Is rain wet?"], ["How can I learn chess?", "Why is tax so high?"]
    assert np.allclose(loaded.probabilities(first, second), verifier.probabilities(first, second))
    assert (loaded.threshold, loaded.min_similarity) == (verifier.threshold, verifier.min_similarity)
    (folder / "verifier.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match=r"verifier\.json: field 'format'"):
        PairVerifier.load(folder)
    with pytest.raises(CheckpointError, match="missing"):
        PairVerifier.load(tmp_path / "nowhere")


def test_verifier_files_are_hashed_and_checked(trained, tmp_path):
    verifier, _ = trained
    folder = verifier.save(tmp_path / "verifier")
    meta = json.loads((folder / "verifier.json").read_text())
    assert {"model.safetensors", "config.json", "tokenizer/tokenizer.json"} <= set(meta["sha256"])
    weights = folder / "model.safetensors"
    original = flip_last_bit(weights)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256 differs from verifier\.json"):
        PairVerifier.load(folder)
    weights.write_bytes(original)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer/tokenizer\.json: missing"):
        PairVerifier.load(folder)


def test_verifier_config_and_paths_are_checked(trained, tmp_path):
    verifier, _ = trained
    folder = verifier.save(tmp_path / "verifier")
    meta = json.loads((folder / "verifier.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_heads": "two"}))
    meta["sha256"]["config.json"] = _sha(folder / "config.json")
    (folder / "verifier.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'n_heads' must be a positive integer"):
        PairVerifier.load(folder)
    (folder / "verifier.json").write_text(json.dumps({**meta, "sha256": {"../../x.safetensors": "0"}}))
    with pytest.raises(
        CheckpointError, match=r"verifier\.json: field 'sha256' names '\.\./\.\./x\.safetensors', outside"
    ):
        PairVerifier.load(folder)
    (folder / "verifier.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    with pytest.raises(CheckpointError, match=r"verifier\.json: field 'sha256' is missing"):
        PairVerifier.load(folder)


def test_verifier_weights_linked_from_outside_are_refused(trained, tmp_path):
    verifier, _ = trained
    folder = verifier.save(tmp_path / "verifier")
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: a link to .*outside the checkpoint folder"):
        PairVerifier.load(folder)


def flip_last_bit(path):
    """Flip one bit of one weight (the file stays valid safetensors); return the original bytes."""
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
    return original


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_bench_command_writes_the_figures(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"cached": p.cached, "incoming": p.incoming, "duplicate": int(p.duplicate)}) + "\n"
            for p in pairs(60)
        )
    )
    path.write_text(path.read_text() + json.dumps({"cached": "Same?", "incoming": "same", "duplicate": 1}) + "\n")
    out = tmp_path / "bench.json"
    argv = ["cache-bench", "--pairs", str(path), "--json", str(out), "--embedder", "hashing", "--sizes", "300",
            "--latency-queries", "20"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    default = result["conservative_default"]
    assert (default["pairs"], default["duplicates"], default["exact_hits"]) == (61, 31, 1)
    assert default["hits"] >= 1 and default["wrong_hit_share"] == 0.0
    assert result["latency"][0]["entries"] == 300 and result["latency"][0]["lookup_without_embedding"]["p50_ms"] > 0
    assert default["precision_recall"][-1] == {"threshold": 2.0, "recall": 0.0323, "precision": 1.0, "hits": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"cached": "a", "incoming": "b"}\n')
    assert main(["cache-bench", "--pairs", str(bad), "--json", str(out)]) == 2
    assert f"{bad}:1: field 'duplicate'" in capsys.readouterr().err


def test_feature_verifier_trains_saves_loads_and_serves_through_a_cache(tmp_path):
    from decimal import Decimal

    from shared_scorer.cache import AnswerCache, FeatureVerifier
    from shared_scorer.context import CallContext, Scope

    verifier, report = FeatureVerifier.train(pairs(400), embedder=HashingEmbedder(), hidden=(16,))
    assert report["fit_pairs"] + report["val_pairs"] == 400 and report["val_auroc"] > 0.7
    folder = verifier.save(tmp_path / "features")
    assert sorted(p.name for p in folder.iterdir()) == ["features.safetensors", "verifier.json"]
    cache = AnswerCache(embedder=HashingEmbedder(), verifier=folder)  # a folder path is loaded
    assert isinstance(cache.verifier, FeatureVerifier) and cache.verifier.threshold == verifier.threshold
    context = CallContext(Scope("acme", "ann"), "fp")
    cache.store("How do I learn about chess?", "Play", context, model="m", score=1.0, cost_usd=Decimal("0.01"))
    texts = (["How do I learn about chess?"], ["How can I learn about chess 7?"])
    assert np.allclose(cache.verifier.probabilities(*texts), verifier.probabilities(*texts))
    weights = folder / "features.safetensors"
    original = flip_last_bit(weights)
    with pytest.raises(CheckpointError, match=r"features\.safetensors: SHA-256 differs from verifier\.json"):
        FeatureVerifier.load(folder)
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(original)
    weights.unlink()
    weights.symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"features\.safetensors: a link to .*outside the checkpoint folder"):
        FeatureVerifier.load(folder)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"features\.safetensors: missing"):
        FeatureVerifier.load(folder)


def test_stacked_verifier_combines_both_parts_and_round_trips(trained, tmp_path):
    from shared_scorer.cache import AnswerCache, FeatureVerifier, StackedVerifier, load_verifier

    pair, _ = trained  # trained on pairs(120): the same hash split of fitting and validation pairs
    verifier, report = StackedVerifier.train(pairs(120), pair=pair, embedder=HashingEmbedder(), seed=0)
    assert report["kind"] == "stacked" and report["val_pairs"] == len([p for p in pairs(120) if _val(p)])
    assert report["operating_point"]["threshold"] == verifier.threshold and len(report["weights"]) == 3
    first, second = ["How do I learn about chess?", "Is rain wet?"], ["How can I learn chess?", "Why is tax so high?"]
    a, b, c = verifier.weights
    z = a * pair.logits(first, second) + b * np.log(
        (p := np.clip(verifier.features.probabilities(first, second).astype(float), 1e-7, 1 - 1e-7)) / (1 - p)
    )
    assert np.allclose(verifier.probabilities(first, second), 1 / (1 + np.exp(-(z + c))))
    folder = verifier.save(tmp_path / "stacked")
    assert sorted(p.name for p in folder.iterdir()) == ["features", "pair", "verifier.json"]
    cache = AnswerCache(embedder=HashingEmbedder(), verifier=folder)  # load_verifier dispatches on the format
    assert isinstance(cache.verifier, StackedVerifier) and isinstance(cache.verifier.features, FeatureVerifier)
    assert np.allclose(cache.verifier.probabilities(first, second), verifier.probabilities(first, second))
    (folder / "verifier.json").write_text('{"format": "frugal-cache-stacked-verifier/1", "weights": [1]}')
    with pytest.raises(CheckpointError, match=r"verifier\.json: corrupt stacked verifier"):
        load_verifier(folder)


def _val(pair: Pair) -> bool:
    from shared_scorer.cache.verifier_training import _in_validation

    return _in_validation(pair, 0.15)


def test_cache_bench_reports_the_figures_of_an_error_bound_at_the_top_level(tmp_path):
    from shared_scorer.cache import FeatureVerifier

    ways = ["quickly", "well", "from scratch", "online", "at home", "for free", "properly"]
    labelled = []
    for i in range(420):
        a, b, way = TOPICS[i % 10], TOPICS[(i * 3 + 1) % 10], ways[i % 7]
        if i % 2:
            labelled.append(Pair(f"How do I learn about {a} {way}?", f"How can I learn about {a} {way}", True))
        else:
            labelled.append(Pair(f"How do I learn about {a} {way}?", f"Why is {b} so popular {way}?", False))
    verifier, _ = FeatureVerifier.train(labelled, embedder=HashingEmbedder(), hidden=(16,))
    folder = verifier.save(tmp_path / "features")
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"cached": p.cached, "incoming": p.incoming, "duplicate": int(p.duplicate)}) + "\n"
            for p in labelled
        )
    )
    out = tmp_path / "bench.json"
    argv = ["cache-bench", "--pairs", str(path), "--json", str(out), "--embedder", "hashing", "--sizes", "300,600",
            "--latency-queries", "20", "--verifier", str(folder), "--max-wrong-rate", "0.05"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    trained = result["trained_verifier"]
    point = verifier.operating_point(0.05)
    assert trained["operating_point"]["threshold"] == point["threshold"]
    assert trained["operating_point"]["min_similarity"] == point["min_similarity"]
    assert result["max_wrong_rate"] == trained["max_wrong_rate"] == 0.05
    assert (result["duplicate_hit_rate"], result["wrong_hit_share"]) == (1.0, 0.0)
    assert (result["duplicates"], result["hits"], result["wrong_hits"]) == (210, 210, 0)
    assert (trained["duplicate_hit_rate"], trained["wrong_hit_share"]) == (1.0, 0.0)
    assert sorted(result["lookup_ms"]) == ["300", "600"] and result["lookup_ms"]["600"]["p50_ms"] > 0
    assert result["verifier_ms_per_candidate"] == trained["verifier_per_candidate"]
    assert 0 < result["verifier_ms_per_candidate"]["p50_ms"] <= result["verifier_ms_per_candidate"]["p99_ms"]
    assert "conservative_default" in result and "latency" in result and "cosine_only" in result  # older keys stay


def _labelled(n: int = 420) -> list[Pair]:
    ways = ["quickly", "well", "from scratch", "online", "at home", "for free", "properly"]
    out = []
    for i in range(n):
        a, b, way = TOPICS[i % 10], TOPICS[(i * 3 + 1) % 10], ways[i % 7]
        if i % 2:
            out.append(Pair(f"How do I learn about {a} {way}?", f"How can I learn about {a} {way}", True))
        else:
            out.append(Pair(f"How do I learn about {a} {way}?", f"Why is {b} so popular {way}?", False))
    return out


def test_train_cache_verifier_defaults_give_the_recommended_features_verifier(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from shared_scorer.cache import AnswerCache, FeatureVerifier, load_verifier
    from shared_scorer.cache.verifier_training import _in_validation

    labelled = _labelled()
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"cached": p.cached, "incoming": p.incoming, "duplicate": int(p.duplicate)}) + "\n"
            for p in labelled
        )
    )
    out = tmp_path / "verifier"
    argv = ["train-cache-verifier", "--pairs", str(path), "--out", str(out), "--embedder", "hashing", "--hidden", "16"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    val = sum(_in_validation(p, 0.15) for p in labelled)
    assert (report["kind"], report["fit_pairs"], report["val_pairs"], report["heldout"]) == (
        "features",
        420 - val,
        val,
        None,
    )
    assert report["lexical"] == 2 and report["trees"] >= 1
    verifier = load_verifier(out)
    assert isinstance(verifier, FeatureVerifier) and verifier.trees is not None and verifier.lexical == 2
    assert len(verifier.info["calibration"]["probs"]) == val
    cache = AnswerCache(embedder=HashingEmbedder(), verifier=verifier, max_wrong_rate=0.05)
    assert cache.operating_point.threshold == verifier.operating_point(0.05)["threshold"]
    # the trees are checked on load: a node pointing outside the arrays is refused
    tensors = load_file(str(out / "features.safetensors"))
    tensors["trees.left"] = tensors["trees.left"] + 10**6
    save_file(tensors, str(out / "features.safetensors"))
    meta = json.loads((out / "verifier.json").read_text())
    from shared_scorer.scoring.backbone import file_sha256

    meta["sha256"]["features.safetensors"] = file_sha256(out / "features.safetensors")
    (out / "verifier.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="a node points outside the arrays"):
        load_verifier(out)


def test_pair_verifier_option_makes_the_default_kind_stacked(tmp_path, trained, capsys):
    verifier, _ = trained
    pair_folder = verifier.save(tmp_path / "pair")
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"cached": p.cached, "incoming": p.incoming, "duplicate": int(p.duplicate)}) + "\n"
            for p in _labelled(200)
        )
    )
    out = tmp_path / "stacked"
    argv = ["train-cache-verifier", "--pairs", str(path), "--out", str(out), "--embedder", "hashing", "--hidden", "16",
            "--pair-verifier", str(pair_folder)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "stacked" and "calibration" in json.loads((out / "verifier.json").read_text())["info"]
    assert main([*argv[:-2], "--kind", "features", "--pair-verifier", str(pair_folder)]) == 2
    assert "--pair-verifier is for --kind stacked, not --kind features" in capsys.readouterr().err
