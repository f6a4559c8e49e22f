"""Backbones: the exact BERT -> DistilBERT conversion of MiniLM, tiny configs, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from shared_scorer.errors import CheckpointError
from shared_scorer.scoring.backbone import (
    OFFLINE_BACKBONE,
    TINY_BACKBONE,
    bert_to_distilbert_state,
    converted_encoder,
    load_backbone,
    minilm_path,
    read_safetensors,
    resolve_backbone,
)

SAMPLES = [
    "Who received the IEEE Frank Rosenblatt Award in 2010?",
    "The award went to **John D. Murray** for contributions to neural networks.",
    "short",
]


def test_converted_minilm_equals_bert_hidden_states() -> None:
    from transformers import AutoTokenizer, BertModel

    folder = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    bert = BertModel.from_pretrained(str(folder), local_files_only=True).eval()
    distil = converted_encoder(folder)
    assert (distil.config.dim, distil.config.n_layers, distil.config.n_heads, distil.config.hidden_dim) == (
        384,
        6,
        12,
        1536,
    )
    batch = tokenizer(SAMPLES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = bert(**batch).last_hidden_state
        got = distil(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].bool()
    diff = (expected - got).abs()[mask].max().item()
    assert diff < 1e-4


def test_token_type_zero_is_folded_into_positions() -> None:
    state = read_safetensors(minilm_path() / "model.safetensors")
    converted = bert_to_distilbert_state(state, 6)
    expected = state["embeddings.position_embeddings.weight"] + state["embeddings.token_type_embeddings.weight"][0]
    assert torch.equal(converted["embeddings.position_embeddings.weight"], expected)
    assert not any("token_type" in k for k in converted)
    assert len(converted) == 4 + 6 * 16


def test_missing_bert_weight_is_named() -> None:
    state = read_safetensors(minilm_path() / "model.safetensors")
    del state["encoder.layer.3.output.dense.weight"]
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.3\.output\.dense\.weight"):
        bert_to_distilbert_state(state, 6)


def test_tiny_backbone_is_seeded_without_touching_global_rng() -> None:
    before = torch.random.get_rng_state()
    a = load_backbone(TINY_BACKBONE, seed=3).model
    b = load_backbone(TINY_BACKBONE, seed=3).model
    c = load_backbone(TINY_BACKBONE, seed=4).model
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["classifier.weight"], sc["classifier.weight"])
    assert a.config.num_labels == 1 and a.config.dim == 32 and a.config.n_layers == 2


def test_minilm_backbone_loads_converted_encoder() -> None:
    loaded = load_backbone(OFFLINE_BACKBONE, seed=0)
    reference = converted_encoder()
    got = loaded.model.distilbert.state_dict()
    assert all(torch.equal(got[k], v) for k, v in reference.state_dict().items())
    assert loaded.name == OFFLINE_BACKBONE


def test_distilbert_folder_and_errors(tmp_path) -> None:
    from safetensors.torch import save_file

    tiny = load_backbone(TINY_BACKBONE, seed=1)
    folder = tmp_path / "distil"
    folder.mkdir()
    tiny.model.config.to_json_file(str(folder / "config.json"))
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(folder / "model.safetensors"))
    tiny.tokenizer.save_pretrained(str(folder))
    again = load_backbone(folder, seed=9)
    assert torch.equal(
        again.model.distilbert.embeddings.word_embeddings.weight,
        tiny.model.distilbert.embeddings.word_embeddings.weight,
    )

    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_backbone(tmp_path / "nowhere")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_backbone(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_backbone(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_backbone(folder)
