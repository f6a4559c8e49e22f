"""The DistilBERT scorer: a fine-tuned ``DistilBertForSequenceClassification`` over (query, answer) pairs.

Each pair is ``[CLS] query context [SEP] answer [SEP]``; the query context is the question, preceded by the
candidate model's name in the shared (model-aware) variant. A long answer keeps its head and its tail (a
reasoning model's verdict is usually at the end). The network's logit goes through a per-model
calibrator, so a score reads as the probability that the answer is correct.

Checkpoint folder (:meth:`DistilBertScorer.save`)::

    scorer.json              format, version, candidate models, calibration, data fingerprint, file hashes
    config.json              the DistilBertConfig
    model.safetensors        weights (shared variant), or model-0.safetensors ... (one per model)
    tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared_scorer.errors import CheckpointError, ConfigurationError, ScorerError
from shared_scorer.fitting.data import Record, fingerprint
from shared_scorer.scoring.base import ScoreRequest
from shared_scorer.scoring.combiner import ModelCombiners, combined_score
from shared_scorer.scoring.encoding import SHARED, PairEncoder, predict_logits, request_of
from shared_scorer.scoring.prior import QueryPrior
from shared_scorer.scoring.signals import Stacker, answer_signals, fit_stacker
from shared_scorer.scoring.training import Calibrator, TrainConfig, TrainResult, config_json, train_nets

FORMAT = "frugal-cascade/distilbert-scorer"
FORMAT_VERSION = 1
META_FILE = "scorer.json"


class DistilBertScorer:
    """Rates (query, answer) pairs with a fine-tuned, calibrated DistilBERT classifier.

    Train it on recorded rows, save it, load it, score: a score is the calibrated probability that the
    answer is correct. ``num_threads`` caps torch's CPU threads during scoring; ``quantize=True`` (or
    :meth:`quantized`) applies dynamic int8 quantisation to the linear layers.

    >>> from shared_scorer.fitting.data import Record
    >>> rows = [Record(f"q{i}", f"question {i}?", "m", "yes" if i % 2 else "I don't know", float(i % 2), 0.0)
    ...         for i in range(12)]
    >>> scorer = DistilBertScorer.train(rows, backbone="tiny-random", epochs=1, progress=False)
    >>> p = scorer.score(ScoreRequest("question 3?", "yes", model="m"))
    >>> 0.0 <= p <= 1.0
    True
    """

    def __init__(
        self,
        nets: Mapping[str, Any],
        tokenizer: Any,
        calibrators: Mapping[str, Calibrator],
        *,
        models: Sequence[str],
        per_model: bool,
        max_length: int = 128,
        head_fraction: float = 0.5,
        batch_size: int = 32,
        num_threads: int | None = None,
        info: Mapping[str, Any] | None = None,
        quantized: bool = False,
        stackers: Mapping[str, Stacker] | None = None,
        with_context: bool = False,
        combiners: Mapping[str, ModelCombiners] | None = None,
        prior: QueryPrior | None = None,
    ) -> None:
        if num_threads is not None and num_threads < 1:
            raise ConfigurationError(f"num_threads must be >= 1, got {num_threads}")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        self.nets = dict(nets)
        self.tokenizer = tokenizer
        self.calibrators = dict(calibrators)
        self.stackers = dict(stackers or {})
        self.combiners: dict[str, ModelCombiners] = dict(combiners or {})
        """Per model, every signal combined (:mod:`shared_scorer.scoring.combiner`); replaces calibrator and
        stacker for the models it names."""
        self.prior = prior
        """The query-only prior per model (:mod:`shared_scorer.scoring.prior`): a combiner feature and the router."""
        self.models = list(models)
        self.per_model = per_model
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.info: dict[str, Any] = dict(info or {})
        self.is_quantized = quantized
        self.encoder = PairEncoder(
            tokenizer, max_length, model_aware=not per_model, head_fraction=head_fraction, with_context=with_context
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, records: Sequence[Record], config: TrainConfig | None = None, **options: Any) -> DistilBertScorer:
        """Fine-tune on recorded rows (options are :class:`TrainConfig` fields); ``.metrics`` holds validation."""
        config = config or TrainConfig()
        for name, value in options.items():
            if not hasattr(config, name):
                raise ConfigurationError(f"unknown training option {name!r}")
            setattr(config, name, value)
        result: TrainResult = train_nets(records, config)
        from shared_scorer.scoring.backbone import resolve_backbone

        info = {
            "backbone": resolve_backbone(config.backbone)[0] if config.backbone else None,
            "training_data_fingerprint": fingerprint(records),
            "training": config_json(config),
            "metrics": result.metrics,
            "train_seconds": result.train_seconds,
        }
        scorer = cls(
            result.nets,
            _tokenizer_of(config),
            result.calibrators,
            models=result.models,
            per_model=config.per_model,
            max_length=config.max_length,
            batch_size=config.batch_size,
            num_threads=config.num_threads,
            info=info,
            with_context=config.context,
        )
        if not config.per_model:
            scorer._fit_pooled_calibrator(records, config, set(result.val_query_ids))
        scorer._fit_stackers(records, set(result.val_query_ids))
        return scorer

    def _fit_pooled_calibrator(self, records: Sequence[Record], config: TrainConfig, val_ids: set[str]) -> None:
        from shared_scorer.scoring.training import fit_calibrator

        rows = [r for r in records if r.query_id in val_ids and r.model in self.models]
        logits = predict_logits(self.nets[SHARED], self.encoder, rows, self.batch_size)
        self.calibrators[SHARED] = fit_calibrator(config.calibration, logits, np.array([r.correct for r in rows]))

    def _fit_stackers(self, records: Sequence[Record], val_ids: set[str]) -> None:
        """Per model, a :class:`Stacker` on the validation rows' logits and usage signals."""
        rows = [r for r in records if r.query_id in val_ids and r.model in self.models]
        requests = [request_of(r) for r in rows]
        logits = self.logits(requests)
        for model in dict.fromkeys(r.model for r in rows):
            index = [i for i, r in enumerate(rows) if r.model == model]
            labels = np.array([rows[i].correct for i in index])
            signals = answer_signals([rows[i].output_tokens for i in index], [rows[i].answer for i in index])
            stacker = fit_stacker(logits[index], signals, labels)
            if stacker is not None:
                self.stackers[model] = stacker

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Validation figures per candidate model (``val_auroc``, ``val_ece``, ``val_rows``)."""
        return dict(self.info.get("metrics", {}))

    # ------------------------------------------------------------------ scoring

    def _net_key(self, model: str) -> str:
        if not self.per_model:
            return SHARED
        if model not in self.nets:
            raise ScorerError(f"this per-model scorer has no network for model {model!r}; it knows {sorted(self.nets)}")
        return model

    def logits(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        """Raw (uncalibrated) logits, same order as given."""
        from shared_scorer.embeddings import torch_threads

        out = np.empty(len(requests))
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(self._net_key(r.model), []).append(i)
        with self._lock, torch_threads(self.num_threads):
            for key, index in groups.items():
                out[index] = predict_logits(self.nets[key], self.encoder, [requests[i] for i in index], self.batch_size)
        return out

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """Calibrated probabilities that each answer is correct, same order as given."""
        requests = list(requests)
        if not requests:
            return []
        return [float(v) for v in self.calibrate(requests, self.logits(requests))]

    def calibrate(self, requests: Sequence[ScoreRequest], logits: np.ndarray) -> np.ndarray:
        """Turn the raw logits of ``requests`` into probabilities with each model's calibrator."""
        out = np.empty(len(requests))
        for model in dict.fromkeys(r.model for r in requests):
            index = [i for i, r in enumerate(requests) if r.model == model]
            calibrator = self.calibrators.get(model) or self.calibrators.get(SHARED) or Calibrator("none", {})
            out[index] = calibrator.apply(logits[index])
            if model in self.stackers:
                chosen = [requests[i] for i in index]
                signals = answer_signals([r.output_tokens for r in chosen], [r.answer for r in chosen])
                out[index] = self.stackers[model].apply(logits[index], signals, out[index])
            if model in self.combiners:
                if self.prior is not None:
                    self.prior.predict_many([requests[i].query for i in index])  # one batch, then cached
                for i in index:
                    value = self._combined(requests[i], float(logits[i]))
                    if value is not None:
                        out[i] = value
        return out

    def _combined(self, request: ScoreRequest, text_logit: float) -> float | None:
        previous = request.previous_answers[-1] if request.previous_answers else None
        prior = self.prior.predict(request.query).get(request.model) if self.prior is not None else None
        return combined_score(
            self.combiners[request.model],
            text=text_logit,
            logprob=request.logprob,
            output_tokens=request.output_tokens,
            answer=request.answer,
            prior=prior,
            previous=previous,
        )

    def route(self, query: str) -> dict[str, float]:
        """The router: each model's predicted probability of answering ``query`` correctly, before any call
        (empty when this scorer has no query prior)."""
        return self.prior.predict(query) if self.prior is not None else {}

    def score(self, request: ScoreRequest) -> float:
        """Calibrated probability that one answer is correct."""
        return self.score_batch([request])[0]

    async def ascore(self, request: ScoreRequest) -> float:
        """:meth:`score` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.score, request)

    async def ascore_batch(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return await asyncio.to_thread(self.score_batch, requests)

    def quantized(self) -> DistilBertScorer:
        """A copy whose linear layers use dynamic int8 quantisation (CPU only; faster, slightly less exact)."""
        import torch

        nets = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            for key, net in self.nets.items():
                nets[key] = quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8, inplace=False).eval()
        return DistilBertScorer(
            nets,
            self.tokenizer,
            self.calibrators,
            models=self.models,
            per_model=self.per_model,
            max_length=self.max_length,
            head_fraction=self.encoder.head_fraction,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            info=self.info,
            quantized=True,
            stackers=self.stackers,
            with_context=self.encoder.with_context,
            combiners=self.combiners,
            prior=self.prior,
        )

    # ------------------------------------------------------------------ save / load

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint folder (safetensors, config, tokenizer, ``scorer.json``); returns it."""
        from safetensors.torch import save_file

        if self.is_quantized:
            raise ConfigurationError("save the float scorer and load it with quantize=True")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        hashes: dict[str, str] = {}
        for i, (key, net) in enumerate(self.nets.items()):
            name = "model.safetensors" if key == SHARED else f"model-{i}.safetensors"
            state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
            save_file(state, str(folder / name), metadata={"format": "pt"})
            files[key] = name
            hashes[name] = _sha256(folder / name)
        next(iter(self.nets.values())).config.to_json_file(str(folder / "config.json"))
        written = [Path(f) for f in self.tokenizer.save_pretrained(str(folder))]
        tokenizer_hashes = {f.name: _sha256(f) for f in written if f.parent == folder and f.is_file()}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": _library_version(),
            "variant": "per-model" if self.per_model else "shared",
            "models": self.models,
            "weights": files,
            "sha256": hashes,
            "tokenizer_sha256": tokenizer_hashes,
            "max_length": self.max_length,
            "head_fraction": self.encoder.head_fraction,
            **({"context": True} if self.encoder.with_context else {}),
            "calibration": {k: c.to_json() for k, c in self.calibrators.items()},
            "stackers": {k: st.to_json() for k, st in self.stackers.items()},
            "combiners": {k: c.to_json() for k, c in self.combiners.items()},
            "prior": None if self.prior is None else self.prior.to_json(),
            **{k: v for k, v in self.info.items() if k not in {"format", "weights", "sha256", "tokenizer_sha256"}},
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, allow_nan=True), encoding="utf-8")
        return folder

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        num_threads: int | None = None,
        batch_size: int = 32,
        quantize: bool = False,
        expect_models: Sequence[str] | None = None,
    ) -> DistilBertScorer:
        """Load a checkpoint folder; anything missing, corrupt or mismatched is a :class:`CheckpointError`."""
        from transformers import DistilBertForSequenceClassification

        from shared_scorer.scoring.backbone import (
            checkpoint_file,
            distilbert_config,
            load_tokenizer,
            read_config,
            read_safetensors,
            verify_sha256,
        )

        folder = Path(path)
        meta_path = folder / META_FILE
        meta = _read_meta(meta_path)
        models = meta["models"]
        if expect_models is not None and set(expect_models) - set(models):
            raise CheckpointError(
                f"{meta_path}: trained for {models}, not for {sorted(set(expect_models) - set(models))}"
            )
        config = distilbert_config(read_config(folder), folder / "config.json")
        # every file scorer.json names stays inside the folder and matches its recorded hash before it is read
        files = {
            key: checkpoint_file(folder, name, f"{meta_path}: field 'weights'") for key, name in meta["weights"].items()
        }
        tokenizer_hashes = meta.get("tokenizer_sha256", {})
        if not isinstance(tokenizer_hashes, dict):
            raise CheckpointError(f"{meta_path}: field 'tokenizer_sha256' must be a JSON dict")
        for name, digest in tokenizer_hashes.items():
            verify_sha256(checkpoint_file(folder, name, f"{meta_path}: field 'tokenizer_sha256'"), digest, meta_path)
        nets = {}
        for key, file in files.items():
            verify_sha256(file, meta["sha256"].get(meta["weights"][key]), meta_path)
            state = read_safetensors(file)
            try:
                net = DistilBertForSequenceClassification(config)
                net.load_state_dict(state, strict=True)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise CheckpointError(f"{file}: weights do not match config.json ({exc})") from None
            nets[key] = net.eval()
        tokenizer = load_tokenizer(folder)
        if len(tokenizer) > config.vocab_size:
            raise CheckpointError(
                f"{folder}: the tokenizer has {len(tokenizer)} tokens, more than config.json's vocab_size "
                f"{config.vocab_size} (a tokenizer of another model?)"
            )
        try:
            calibrators = {k: Calibrator.from_json(v) for k, v in meta["calibration"].items()}
            stackers = {k: Stacker.from_json(v) for k, v in meta.get("stackers", {}).items()}
            combiners = {k: ModelCombiners.from_json(v) for k, v in meta.get("combiners", {}).items()}
            prior = None if meta.get("prior") is None else QueryPrior.from_json(meta["prior"])
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{folder / META_FILE}: bad calibration ({exc})") from None
        scorer = cls(
            nets,
            tokenizer,
            calibrators,
            models=models,
            per_model=meta["variant"] == "per-model",
            max_length=int(meta["max_length"]),
            head_fraction=float(meta.get("head_fraction", 0.5)),
            batch_size=batch_size,
            num_threads=num_threads,
            info={k: meta[k] for k in ("backbone", "training_data_fingerprint", "training", "metrics") if k in meta},
            stackers=stackers,
            with_context=meta.get("context") is True,
            combiners=combiners,
            prior=prior,
        )
        return scorer.quantized() if quantize else scorer


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a DistilBertScorer checkpoint folder)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {meta.get('format_version')!r}, this library reads {FORMAT_VERSION}"
        )
    for key, kind in (("models", list), ("weights", dict), ("sha256", dict), ("calibration", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} must be a JSON {kind.__name__}")
    if meta.get("variant") not in ("per-model", "shared") or not isinstance(meta.get("max_length"), int):
        raise CheckpointError(f"{path}: field 'variant' or 'max_length' is missing or wrong")
    return meta


def _sha256(path: Path) -> str:
    from shared_scorer.scoring.backbone import file_sha256

    return file_sha256(path)


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("frugal-cascade")
    except PackageNotFoundError:
        return "0.1.0"


def _tokenizer_of(config: TrainConfig) -> Any:
    from shared_scorer.scoring.backbone import load_tokenizer, minilm_path, resolve_backbone

    _, folder = resolve_backbone(config.backbone)
    return load_tokenizer(folder if folder is not None else minilm_path())
