"""Training the DistilBERT scorer: split by query, fine-tune with AdamW, stop early, calibrate.

Randomness is local to each call: the split uses a ``numpy.random.Generator``, batch order a
``torch.Generator``, and dropout runs inside ``torch.random.fork_rng`` seeded from the call's seed, so the
caller's global random state is left as it was and two calls with the same seed give the same weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.data import Record
from shared_scorer.scoring.encoding import SHARED, PairEncoder, predict_logits

CALIBRATIONS = ("isotonic", "platt", "temperature", "none")


@dataclass
class TrainConfig:
    """Options of :func:`train_nets` (and of ``frugal train-scorer``)."""

    backbone: str | None = None
    """``minilm``, ``tiny-random``, a folder or a hub name; ``None``: see ``backbone.default_backbone``."""
    per_model: bool = False
    """One network per candidate model (``True``) or one shared network told the model's name."""
    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = 128
    """Word pieces per pair (question first, then the head and tail of the answer)."""
    freeze_layers: int = 4
    """Freeze the embeddings and this many lower transformer layers (0: train everything); at most all
    but the top layer are frozen, so the default also fits small backbones."""
    val_fraction: float = 0.15
    patience: int = 1
    """Epochs without a better validation AUROC before stopping."""
    evals_per_epoch: int = 2
    seed: int = 0
    calibration: str = "isotonic"
    num_threads: int | None = None
    dropout: float | None = None
    models: list[str] | None = None
    """Train for these candidate models only (default: every model in the data)."""
    progress: bool = True
    context: bool = False
    """Read the caller's context with each pair (profile, system prompt, earlier turns, tool results; see
    ``PairEncoder``); saved with the scorer, which then reads it at scoring time too."""

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 16:
            raise ConfigurationError("epochs and batch_size must be >= 1 and max_length >= 16")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigurationError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.freeze_layers < 0:
            raise ConfigurationError(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        if self.calibration not in CALIBRATIONS:
            raise ConfigurationError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")


@dataclass
class TrainResult:
    """What :func:`train_nets` returns: networks, calibrators and validation figures."""

    nets: dict[str, Any]
    calibrators: dict[str, Calibrator]
    models: list[str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    train_seconds: float = 0.0
    val_query_ids: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- metrics


def auroc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of binary labels (>= 0.5 is positive); NaN when one class is absent."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=float) >= 0.5
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def expected_calibration_error(
    labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """ECE with ``bins`` equal-width bins on [0, 1]: sum over bins of (share of rows) x |mean p - mean y|.

    The last bin is closed ([0.9, 1.0]); labels may be soft (the mean correctness is used).
    """
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise DataError(f"labels and probabilities must be two vectors of one length, got {y.shape}, {p.shape}")
    if len(y) == 0:
        return math.nan
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


# ----------------------------------------------------------------------------- calibration


@dataclass
class Calibrator:
    """Maps a raw logit to a probability of being correct; JSON-serialisable.

    ``isotonic``: piecewise-linear through fitted (logit, probability) knots; ``platt``: sigmoid(a*z + b);
    ``temperature``: sigmoid(z / T); ``none``: sigmoid(z).

    >>> Calibrator("platt", {"a": 2.0, "b": 0.0}).apply(np.array([0.0]))
    array([0.5])
    """

    method: str
    params: dict[str, Any]

    def apply(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=float)
        if self.method == "isotonic":
            x, y = np.asarray(self.params["x"], float), np.asarray(self.params["y"], float)
            out = np.interp(z, x, y)
        elif self.method == "platt":
            out = sigmoid(self.params["a"] * z + self.params["b"])
        elif self.method == "temperature":
            out = sigmoid(z / self.params["t"])
        else:
            out = sigmoid(z)
        return np.clip(out, 0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}

    @classmethod
    def from_json(cls, data: Any) -> Calibrator:
        if not isinstance(data, dict) or data.get("method") not in CALIBRATIONS:
            raise ValueError(f"bad calibrator {data!r:.120}")
        params = data.get("params")
        if not isinstance(params, dict):
            raise ValueError("calibrator params must be an object")
        return cls(data["method"], params)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, clipped so that large logits do not overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def fit_calibrator(method: str, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Fit ``method`` on validation logits and (soft) labels."""
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=float)
    if method == "none" or len(z) == 0:
        return Calibrator("none", {})
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y)
        return Calibrator(
            "isotonic", {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}
        )
    if method == "platt":
        a, b = _fit_logistic_1d(z, y)
        return Calibrator("platt", {"a": a, "b": b})
    if method == "temperature":
        grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 400))
        losses = [_nll(sigmoid(z / t), y) for t in grid]
        return Calibrator("temperature", {"t": float(grid[int(np.argmin(losses))])})
    raise ConfigurationError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _fit_logistic_1d(z: np.ndarray, y: np.ndarray, steps: int = 200) -> tuple[float, float]:
    """Platt scaling by Newton's method on soft labels (with a tiny ridge for separable data)."""
    a, b = 1.0, 0.0
    for _ in range(steps):
        p = sigmoid(a * z + b)
        w = p * (1 - p) + 1e-9
        grad = np.array([((p - y) * z).sum() + 1e-3 * a, (p - y).sum()])
        hess = np.array([[(w * z * z).sum() + 1e-3, (w * z).sum()], [(w * z).sum(), w.sum()]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        a, b = a - float(step[0]), b - float(step[1])
        if np.abs(step).max() < 1e-8:
            break
    return a, b


# ----------------------------------------------------------------------------- split


def split_by_query(records: Sequence[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Split rows so that every query lies wholly in train or wholly in validation."""
    ids = sorted({r.query_id for r in records})
    if len(ids) < 2:
        raise DataError(f"need at least two distinct queries to split, got {len(ids)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    val_ids = {ids[i] for i in order[:n_val]}
    return [r for r in records if r.query_id not in val_ids], [r for r in records if r.query_id in val_ids]


# ----------------------------------------------------------------------------- training


def train_nets(records: Sequence[Record], config: TrainConfig) -> TrainResult:
    """Fine-tune the scorer network(s) on recorded rows and calibrate them on the validation split."""
    import torch

    from shared_scorer.embeddings import torch_threads
    from shared_scorer.scoring.backbone import load_backbone

    config.check()
    all_models = list(dict.fromkeys(r.model for r in records))
    models = config.models or all_models
    unknown = [m for m in models if m not in all_models]
    if unknown:
        raise DataError(f"models {unknown} have no rows in the training data")
    records = [r for r in records if r.model in models]
    train_rows, val_rows = split_by_query(records, config.val_fraction, config.seed)
    started = time.perf_counter()
    nets: dict[str, Any] = {}
    groups = {m: [m] for m in models} if config.per_model else {SHARED: list(models)}
    tokenizer = None
    with torch_threads(config.num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for key, group in groups.items():
            backbone = load_backbone(config.backbone, seed=config.seed, dropout=config.dropout)
            tokenizer = backbone.tokenizer
            encoder = PairEncoder(
                tokenizer, config.max_length, model_aware=not config.per_model, with_context=config.context
            )
            nets[key] = _fit_one(
                backbone.model,
                encoder,
                [r for r in train_rows if r.model in group],
                [r for r in val_rows if r.model in group],
                config,
                label=key,
            )
        assert tokenizer is not None
        encoder = PairEncoder(
            tokenizer, config.max_length, model_aware=not config.per_model, with_context=config.context
        )
        calibrators: dict[str, Calibrator] = {}
        metrics: dict[str, dict[str, float]] = {}
        for model in models:
            rows = [r for r in val_rows if r.model == model]
            net = nets[model if config.per_model else SHARED]
            logits = predict_logits(net, encoder, rows, config.batch_size)
            labels = np.array([r.correct for r in rows])
            calibrators[model] = fit_calibrator(config.calibration, logits, labels)
            probs = calibrators[model].apply(logits)
            metrics[model] = {
                "val_auroc": auroc(labels, logits),
                "val_ece": expected_calibration_error(labels, probs),
                "val_rows": float(len(rows)),
            }
    return TrainResult(
        nets=nets,
        calibrators=calibrators,
        models=list(models),
        metrics=metrics,
        train_seconds=time.perf_counter() - started,
        val_query_ids=sorted({r.query_id for r in val_rows}),
    )


def _fit_one(
    net: Any, encoder: Any, train_rows: list[Record], val_rows: list[Record], config: TrainConfig, label: str
) -> Any:
    import torch
    from tqdm.auto import tqdm

    if not train_rows:
        raise DataError(f"no training rows for {label!r}")
    freeze(net, config.freeze_layers)
    encoded = encoder.encode_records(train_rows)
    targets = torch.tensor([r.correct for r in train_rows], dtype=torch.float32)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer, scheduler = optimizer_for(net, config, total)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    eval_at = _eval_points(steps_per_epoch, config.evals_per_epoch)
    best: tuple[float, float] = (-math.inf, -math.inf)  # (validation AUROC, minus validation loss)
    best_state, stale = None, 0
    bar = tqdm(total=total, desc=f"train {label}", disable=not config.progress, leave=False)
    stop = False
    for _epoch in range(config.epochs):
        batches = length_batches(range(len(encoded)), lambda i: len(encoded[i]), config.batch_size, generator)
        for step, batch in enumerate(batches, start=1):
            net.train()
            inputs = encoder.collate([encoded[i] for i in batch])
            logits = net(**inputs).logits.squeeze(-1)
            loss = loss_fn(logits, targets[batch])
            descend(net, optimizer, scheduler, loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_auroc=f"{best[0]:.3f}")
            if step not in eval_at:
                continue
            value = _val_figures(net, encoder, val_rows, config.batch_size, predict_logits)
            if best_state is None or value > best:
                best, best_state, stale = value, copy.deepcopy(net.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience * max(1, config.evals_per_epoch):
                    stop = True
                    break
        if stop:
            break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    for p in net.parameters():
        p.requires_grad_(True)
    return net.eval()


def _eval_points(steps_per_epoch: int, evals: int) -> set[int]:
    evals = max(1, min(evals, steps_per_epoch))
    return {math.ceil(steps_per_epoch * k / evals) for k in range(1, evals + 1)}


def _val_figures(net: Any, encoder: Any, rows: list[Record], batch_size: int, predict: Any) -> tuple[float, float]:
    """(validation AUROC, minus validation log-loss): AUROC is the mean over candidate models (NaN-free);
    the loss breaks ties, e.g. when a small validation set is ranked perfectly by several checkpoints."""
    if not rows:
        return 0.0, 0.0
    logits = predict(net, encoder, rows, batch_size)
    labels = np.array([r.correct for r in rows])
    loss = _nll(sigmoid(logits), labels)
    values = []
    for model in dict.fromkeys(r.model for r in rows):
        idx = [i for i, r in enumerate(rows) if r.model == model]
        value = auroc([rows[i].correct for i in idx], logits[idx])
        if not math.isnan(value):
            values.append(value)
    return (round(float(np.mean(values)), 6) if values else 0.0), -loss


def length_batches(
    index: Sequence[int], length: Callable[[int], int], batch_size: int, generator: Any, window: int = 50
) -> list[list[int]]:
    """Shuffled batches of items of similar length (less padding: about a third faster on CPU).

    The items of ``index`` are shuffled, cut into windows of ``window`` batches, sorted by ``length``
    inside each window, batched, and the batches shuffled again: each batch is still a random draw.
    """
    import torch

    order = [index[i] for i in torch.randperm(len(index), generator=generator).tolist()]
    size = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        part = sorted(order[start : start + size], key=length)
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def optimizer_for(net: Any, config: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters (the body at ``config.lr``, the head at ``config.head_lr``)
    and a linear schedule with ``config.warmup_fraction`` warm-up."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    head = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("distilbert.")]
    body = [p for n, p in net.named_parameters() if p.requires_grad and n.startswith("distilbert.")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": config.lr}, {"params": head, "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    warmup = int(config.warmup_fraction * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def descend(net: Any, optimizer: Any, scheduler: Any, loss: Any) -> None:
    """One optimisation step: backward, clip gradients at norm 1, step, advance the schedule."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def freeze(net: Any, layers: int) -> None:
    """Freeze the embeddings and the ``layers`` lowest transformer layers (at most all but the top one)."""
    if layers <= 0:
        return
    layers = min(layers, len(net.distilbert.transformer.layer) - 1)
    for p in net.distilbert.embeddings.parameters():
        p.requires_grad_(False)
    for layer in net.distilbert.transformer.layer[:layers]:
        for p in layer.parameters():
            p.requires_grad_(False)


def config_json(config: TrainConfig) -> dict[str, Any]:
    """The training options as JSON (saved with the checkpoint)."""
    return asdict(config)
