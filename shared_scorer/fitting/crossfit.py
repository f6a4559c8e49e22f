"""Cross-fitting the DistilBERT scorer on a CPU budget: train its top layer on cached lower-layer states.

The lower ``n_layers - 1`` encoder layers, and the top layer's key and value projections, stay frozen at
the backbone's weights, so for each training pair the top layer's keys and values (every token) and its
input at ``[CLS]`` never change: they are computed once and cached (keys and values in float16). Only the
``[CLS]`` position of the top layer feeds the classification head, so training evaluates the top layer
for ``[CLS]`` alone: its query projection, attention output, feed-forward block and layer norms are
trained, with the head. A fold then costs a small fraction of one forward pass, and ``k`` folds plus
the final fit cost less than one forward pass over the training pairs. :func:`top_layer_logits` is
checked at run time against the full network's forward pass (same weights, eval mode), so the scorer
that ships computes exactly what was trained.

Why not fine-tune every layer: on a 2-core CPU the full fine-tune runs at about 10-20 pairs a second,
so k-fold cross-fitting of it cannot fit SimpleQA in ``frugal bench``'s 20 minutes; ``design="full"``
(``FitConfig``) still does it where time allows.

Out-of-fold logits are calibrated per model (isotonic, fitted on all out-of-fold logits of that model);
the final scorer, trained the same way on every training query, ships with those calibrators.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_scorer.errors import ConfigurationError, DataError, ScorerError
from shared_scorer.fitting.data import Record, fingerprint
from shared_scorer.scoring.signals import Stacker, answer_signals, cross_fitted, fit_stacker
from shared_scorer.scoring.training import (
    Calibrator,
    TrainConfig,
    auroc,
    config_json,
    fit_calibrator,
    length_batches,
)


def fold_of(
    query_ids: Sequence[str], folds: int, seed: int, strata: Mapping[str, float] | None = None
) -> dict[str, int]:
    """Assign each query to one of ``folds`` groups of (nearly) equal size, from a local Generator.

    With ``strata`` (e.g. how many models answered a query correctly) the queries are dealt in order of
    stratum, so every fold holds the same mix of easy and hard queries: a fold whose training part is
    easier than its held-out part would shift its scores and fake an anti-correlated signal.

    >>> folds = fold_of(["a", "b", "c", "d"], 2, 0, strata={"a": 0, "b": 0, "c": 1, "d": 1})
    >>> folds["a"] != folds["b"] and folds["c"] != folds["d"]
    True
    """
    order = np.random.default_rng(seed).permutation(len(query_ids))
    if strata is not None:
        order = np.array(sorted(order, key=lambda i: strata[query_ids[int(i)]]), dtype=np.int64)
    return {query_ids[int(i)]: n % folds for n, i in enumerate(order)}


@dataclass
class TopLayerConfig:
    """Options of the top-layer trainer (the backbone, max_length, batch size and threads come from TrainConfig)."""

    epochs: int = 5
    lr: float = 3e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    encode_batch_size: int = 64
    usage_signals: bool = True
    """Stack each model's logit with its answers' billed output tokens and length (see scoring.signals)."""


def _cls_output(block: Any, cls: Any, keys: Any, values: Any, mask: Any, training: bool) -> Any:
    """The top block's output at position 0 from its input there (``cls``) and every token's keys and values."""
    import torch

    att = block.attention
    batch, width, dim = keys.shape
    size = att.attention_head_size
    heads = dim // size
    q = att.q_lin(cls[:, None]).view(batch, 1, heads, size).transpose(1, 2)
    k = keys.view(batch, width, heads, size).transpose(1, 2)
    v = values.view(batch, width, heads, size).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2)) * att.scaling
    weights = weights.masked_fill(~mask[:, None, None, :].bool(), torch.finfo(weights.dtype).min)
    weights = torch.softmax(weights, dim=-1)
    if training and att.dropout.p > 0:
        weights = torch.nn.functional.dropout(weights, p=att.dropout.p, training=True)
    context = (weights @ v).transpose(1, 2).reshape(batch, 1, dim)
    hidden = block.sa_layer_norm(att.out_lin(context) + cls[:, None])
    return block.output_layer_norm(block.ffn(hidden) + hidden)[:, 0]


def top_layer_logits(net: Any, cls: Any, keys: Any, values: Any, mask: Any, training: bool = False) -> Any:
    """Logits of ``DistilBertForSequenceClassification`` from its top layer's [CLS] input, keys and values."""
    import torch

    pooled = _cls_output(net.distilbert.transformer.layer[-1], cls, keys, values, mask, training)
    pooled = torch.relu(net.pre_classifier(pooled))
    if training:
        pooled = net.dropout(pooled)
    return net.classifier(pooled)[:, 0]


class TopLayerTrainer:
    """Encodes pairs once with the frozen lower layers, then trains top layer + head per fold, cheaply.

    >>> from shared_scorer.fitting.data import Record
    >>> rows = [Record(f"q{i}", f"question {i}?", "m", "yes" if i % 2 else "no idea", float(i % 2), 0.0)
    ...         for i in range(8)]
    >>> trainer = TopLayerTrainer(TrainConfig(backbone="tiny-random", max_length=32, progress=False), rows)
    >>> state = trainer.train(range(8), seed=0)
    >>> trainer.logits(state, range(8)).shape
    (8,)
    """

    def __init__(self, train: TrainConfig, rows: Sequence[Record], top: TopLayerConfig | None = None) -> None:
        import torch

        from shared_scorer.embeddings import torch_threads
        from shared_scorer.scoring.backbone import load_backbone
        from shared_scorer.scoring.encoding import PairEncoder

        if train.per_model:
            raise ConfigurationError("the top-layer cross-fit trains the shared (model-aware) scorer only")
        if not rows:
            raise DataError("no rows to train the scorer on")
        self.config = train
        self.top = top or TopLayerConfig()
        self.rows = list(rows)
        self.backbone = load_backbone(train.backbone, seed=train.seed, dropout=train.dropout)
        self.net = self.backbone.model
        if len(self.net.distilbert.transformer.layer) < 2:
            raise ConfigurationError("the top-layer cross-fit needs a backbone with at least two layers")
        self.encoder = PairEncoder(
            self.backbone.tokenizer, train.max_length, model_aware=True, with_context=train.context
        )
        self.initial = copy.deepcopy(self._trainable_state())
        started = time.perf_counter()
        with torch_threads(train.num_threads), torch.inference_mode():
            self.ids = self.encoder.encode_records(self.rows)
            self.states = self._encode_lower(self.ids)
        self.encode_seconds = time.perf_counter() - started
        self.targets = torch.tensor([r.correct for r in self.rows], dtype=torch.float32)

    # ------------------------------------------------------------------ encoding

    def _lower_states(self, batch: list[list[int]]) -> tuple[Any, Any]:
        import torch

        inputs = self.encoder.collate(batch)
        layers = self.net.distilbert.transformer.layer
        self.net.distilbert.transformer.layer = torch.nn.ModuleList(list(layers)[:-1])
        try:
            states = self.net.distilbert(**inputs).last_hidden_state
        finally:
            self.net.distilbert.transformer.layer = layers
        return states, inputs["attention_mask"]

    def _encode_lower(self, ids: list[list[int]]) -> list[Any]:
        """Per row: the top layer's input at [CLS] (float32) and its keys and values for every token (float16)."""
        import torch
        from tqdm.auto import tqdm

        self.net.eval()
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[Any] = [None] * len(ids)
        size = self.top.encode_batch_size
        bar = tqdm(total=len(ids), desc="encode", disable=not self.config.progress, leave=False)
        att = self.net.distilbert.transformer.layer[-1].attention
        for start in range(0, len(order), size):
            index = order[start : start + size]
            states, _ = self._lower_states([ids[i] for i in index])
            kv = torch.cat([att.k_lin(states), att.v_lin(states)], dim=-1).to(dtype=torch.float16)
            for row, i in enumerate(index):
                out[i] = (states[row, 0].clone(), kv[row, : len(ids[i])].clone())
            bar.update(len(index))
        bar.close()
        self._check_equivalence(ids[: min(8, len(ids))])
        return out

    def _check_equivalence(self, sample: list[list[int]]) -> None:
        if not sample:
            return
        states, mask = self._lower_states(sample)
        att = self.net.distilbert.transformer.layer[-1].attention
        mine = top_layer_logits(self.net, states[:, 0], att.k_lin(states), att.v_lin(states), mask).float()
        full = self.net(**self.encoder.collate(sample)).logits[:, 0].float()
        if not bool((mine - full).abs().max() < 1e-3 * (1 + full.abs().max())):
            raise ScorerError("the top-layer shortcut disagrees with the full network; use design='full'")

    def _batch(self, index: Sequence[int]) -> tuple[Any, Any, Any, Any]:
        import torch

        width = max(len(self.ids[i]) for i in index)
        dim = self.states[index[0]][0].shape[-1]
        cls = torch.stack([self.states[i][0] for i in index])
        kv = torch.zeros((len(index), width, 2 * dim), dtype=torch.float32)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            n = len(self.ids[i])
            kv[row, :n] = self.states[i][1].float()
            mask[row, :n] = 1
        return cls, kv[..., :dim], kv[..., dim:], mask

    # ------------------------------------------------------------------ training

    def _trainable(self) -> list[Any]:
        return [self.net.distilbert.transformer.layer[-1], self.net.pre_classifier, self.net.classifier]

    def _trainable_state(self) -> list[dict[str, Any]]:
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self._trainable()]

    def _load(self, state: list[dict[str, Any]]) -> None:
        for module, part in zip(self._trainable(), state, strict=True):
            module.load_state_dict(part)

    def train(self, rows: Sequence[int] | range, seed: int) -> list[dict[str, Any]]:
        """Train top layer + head from their initial weights on the given row indices; returns their state."""
        import torch
        from tqdm.auto import tqdm
        from transformers import get_linear_schedule_with_warmup

        from shared_scorer.embeddings import torch_threads

        index = list(rows)
        if not index:
            raise DataError("no rows to train on")
        self._load(self.initial)
        block, head = self._trainable()[0], self._trainable()[1:]
        # keys and values come from the cache: k_lin and v_lin stay at the backbone's weights
        frozen = {id(p) for p in [*block.attention.k_lin.parameters(), *block.attention.v_lin.parameters()]}
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in block.parameters() if id(p) not in frozen], "lr": self.top.lr},
                {"params": [p for m in head for p in m.parameters()], "lr": self.top.head_lr},
            ],
            weight_decay=self.top.weight_decay,
        )
        size = self.config.batch_size
        total = math.ceil(len(index) / size) * self.top.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.config.warmup_fraction * total), total)
        generator = torch.Generator().manual_seed(seed)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        bar = tqdm(total=total, desc="train top layer", disable=not self.config.progress, leave=False)
        with torch_threads(self.config.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(self.top.epochs):
                for batch in length_batches(index, lambda i: len(self.ids[i]), size, generator):
                    logits = top_layer_logits(self.net, *self._batch(batch), training=True)
                    loss = loss_fn(logits, self.targets[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    bar.update(1)
        bar.close()
        return self._trainable_state()

    def logits(self, state: list[dict[str, Any]], rows: Sequence[int] | range) -> np.ndarray:
        """Raw logits of the given row indices under a trained state."""
        import torch

        from shared_scorer.embeddings import torch_threads

        index = list(rows)
        self._load(state)
        out = np.empty(len(index))
        order = sorted(range(len(index)), key=lambda j: len(self.ids[index[j]]))
        with torch_threads(self.config.num_threads), torch.inference_mode():
            for start in range(0, len(order), 128):
                part = order[start : start + 128]
                out[part] = top_layer_logits(self.net, *self._batch([index[j] for j in part])).float().numpy()
        return out

    def scorer(self, state: list[dict[str, Any]], calibrators: dict[str, Calibrator], info: dict[str, Any]) -> Any:
        """A :class:`DistilBertScorer` holding the trained state (the full network, ready to save)."""
        from shared_scorer.scoring.distilbert import DistilBertScorer
        from shared_scorer.scoring.encoding import SHARED

        self._load(state)
        net = copy.deepcopy(self.net).eval()
        return DistilBertScorer(
            {SHARED: net},
            self.backbone.tokenizer,
            calibrators,
            models=list(dict.fromkeys(r.model for r in self.rows)),
            per_model=False,
            max_length=self.config.max_length,
            batch_size=self.config.batch_size,
            num_threads=self.config.num_threads,
            info=info,
            with_context=self.encoder.with_context,
        )


def cross_fit_top_layer(
    rows: Sequence[Record],
    folds: int,
    seed: int,
    train: TrainConfig,
    top: TopLayerConfig | None = None,
    progress: Callable[[str], None] | None = None,
    fold: Mapping[str, int] | None = None,
) -> tuple[dict[tuple[str, str], float], Any, dict[str, float], dict[tuple[str, str], float]]:
    """Out-of-fold calibrated scores for every row, the final scorer trained on all rows, the timings, and
    the out-of-fold raw logits. ``fold`` assigns queries to folds (default: :func:`fold_of`)."""
    from shared_scorer.scoring.encoding import SHARED

    ids = list(dict.fromkeys(r.query_id for r in rows))
    if len(ids) < 2 * folds:
        raise DataError(f"{len(ids)} queries are too few for {folds}-fold cross-fitting")
    if progress:
        progress(f"encoding {len(rows)} pairs with the frozen lower layers")
    trainer = TopLayerTrainer(train, rows, top)
    seconds = {"encode": trainer.encode_seconds}
    fold = fold or fold_of(ids, folds, seed)
    folds = len(set(fold.values()))
    oof = np.empty(len(rows))
    started = time.perf_counter()
    for f in range(folds):
        inside = [i for i, r in enumerate(rows) if fold[r.query_id] != f]
        held_out = [i for i, r in enumerate(rows) if fold[r.query_id] == f]
        if progress:
            progress(f"fold {f + 1}/{folds}: train top layer on {len(inside)} pairs, score {len(held_out)}")
        state = trainer.train(inside, seed + 1 + f)
        oof[held_out] = trainer.logits(state, held_out)
    seconds["folds"] = time.perf_counter() - started
    labels = np.array([r.correct for r in rows])
    models = list(dict.fromkeys(r.model for r in rows))
    calibrators: dict[str, Calibrator] = {}
    metrics: dict[str, dict[str, float]] = {}
    scores = np.empty(len(rows))
    stackers: dict[str, Stacker] = {}
    use_signals = trainer.top.usage_signals
    for m in models:
        idx = [i for i, r in enumerate(rows) if r.model == m]
        calibrators[m] = fit_calibrator(train.calibration, oof[idx], labels[idx])
        scores[idx] = calibrators[m].apply(oof[idx])
        metrics[m] = {"oof_auroc": auroc(labels[idx], oof[idx]), "oof_rows": float(len(idx))}
        if use_signals:
            # usage signals on top of the logit; the stacked scores are themselves out of fold
            signals = answer_signals([rows[i].output_tokens for i in idx], [rows[i].answer for i in idx])
            scores[idx] = cross_fitted(oof[idx], signals, labels[idx], scores[idx], seed=seed)
            stacker = fit_stacker(oof[idx], signals, labels[idx])
            if stacker is not None:
                stackers[m] = stacker
            metrics[m]["oof_auroc_with_signals"] = auroc(labels[idx], scores[idx])
    calibrators[SHARED] = fit_calibrator(train.calibration, oof, labels)
    if progress:
        progress(f"final scorer: train top layer on all {len(rows)} pairs")
    started = time.perf_counter()
    state = trainer.train(range(len(rows)), seed)
    seconds["final"] = time.perf_counter() - started
    from shared_scorer.scoring.backbone import resolve_backbone

    info = {
        "backbone": resolve_backbone(train.backbone)[0],
        "training_data_fingerprint": fingerprint(rows),
        "training": config_json(train) | {"design": "top-layer cross-fit", "folds": folds, **vars(trainer.top)},
        "metrics": metrics,
        "train_seconds": sum(seconds.values()),
    }
    scorer = trainer.scorer(state, calibrators, info)
    scorer.stackers = stackers
    out = {(r.query_id, r.model): float(s) for r, s in zip(rows, scores, strict=True)}
    logits = {(r.query_id, r.model): float(v) for r, v in zip(rows, oof, strict=True)}
    return out, scorer, seconds, logits
