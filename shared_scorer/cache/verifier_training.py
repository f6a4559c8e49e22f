"""Training the cache verifier: fine-tune a DistilBERT pair classifier, calibrate it, pick its operating point.

The pairs given are split (by a fixed hash, not at random) into fitting and validation pairs; the network
is fine-tuned on the first, calibrated on the second, and the cosine floor and probability threshold are
chosen on the second for the target wrong-hit share. Randomness (head initialisation, batch order, pair
order, dropout) is local to the call, seeded from ``config.seed``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shared_scorer.cache.embedders import as_embedder
from shared_scorer.cache.pairs import Pair, hit_figures
from shared_scorer.cache.verifier import PairVerifier, calibration_record, choose_operating_point, guarded
from shared_scorer.errors import ConfigurationError, DataError


@dataclass
class VerifierConfig:
    """Options of :func:`train_verifier` (and of ``frugal train-cache-verifier``)."""

    backbone: str | None = "minilm"
    """``minilm`` (offline), ``tiny-random`` (tests), a folder or a hub name."""
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = 64
    freeze_layers: int = 0
    val_fraction: float = 0.15
    target_wrong_share: float = 0.05
    margin_z: float = 1.0
    """The wrong-hit share is held to the target with this many standard errors of margin."""
    calibration: str = "platt"
    """Platt (monotone: every distinct logit stays a distinct threshold) or isotonic (ties at the top)."""
    max_pairs: int | None = None
    seed: int = 0
    num_threads: int | None = None
    progress: bool = True

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 16:
            raise ConfigurationError("epochs and batch_size must be >= 1 and max_length >= 16")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigurationError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.target_wrong_share < 1.0:
            raise ConfigurationError(f"target_wrong_share must be in (0, 1), got {self.target_wrong_share}")


def _in_validation(pair: Pair, fraction: float) -> bool:
    digest = hashlib.sha256(f"val\x1f{pair.cached}\x1f{pair.incoming}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def train_verifier(
    pairs: Sequence[Pair], config: VerifierConfig | None = None, *, embedder: object | None = None
) -> tuple[PairVerifier, dict[str, Any]]:
    """Fine-tune, calibrate and set the operating point of a :class:`PairVerifier` on labelled pairs.

    ``embedder`` must be the one the cache will use (its cosines set the floor); default: the local MiniLM.
    Returns the verifier and a report of the validation figures.
    """
    import torch

    from shared_scorer.embeddings import torch_threads
    from shared_scorer.scoring.backbone import load_backbone
    from shared_scorer.scoring.training import Calibrator, auroc, fit_calibrator

    config = config or VerifierConfig()
    config.check()
    pairs = list(pairs)[: config.max_pairs] if config.max_pairs else list(pairs)
    fit = [p for p in pairs if not _in_validation(p, config.val_fraction)]
    val = [p for p in pairs if _in_validation(p, config.val_fraction)]
    if len(fit) < 2 or len(val) < 2:
        raise DataError(f"need at least two fitting and two validation pairs, got {len(fit)} and {len(val)}")
    if len({p.duplicate for p in fit}) < 2:
        raise DataError("the fitting pairs need both duplicates and non-duplicates")
    started = time.perf_counter()
    with torch_threads(config.num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        backbone = load_backbone(config.backbone, seed=config.seed)
        verifier = PairVerifier(
            backbone.model, backbone.tokenizer, Calibrator("none", {}), threshold=1.0, min_similarity=1.0,
            max_length=config.max_length, batch_size=max(config.batch_size, 64),
        )  # fmt: skip
        _fit(verifier, fit, config)
        labels = np.array([p.duplicate for p in val], dtype=float)
        logits = verifier.logits([p.cached for p in val], [p.incoming for p in val])
    verifier.calibrator = fit_calibrator(config.calibration, logits, labels)
    probs = verifier.calibrator.apply(logits)
    vectors = as_embedder(embedder).embed([t for p in val for t in (p.cached, p.incoming)])
    sims = np.einsum("ij,ij->i", vectors[0::2], vectors[1::2])
    val_first, val_second = [p.cached for p in val], [p.incoming for p in val]
    point = choose_operating_point(
        guarded(probs, val_first, val_second), sims, labels.astype(bool),
        target_wrong_share=config.target_wrong_share, z=config.margin_z,
    )  # fmt: skip
    verifier.threshold, verifier.min_similarity = point["threshold"], point["min_similarity"]
    hits = (sims >= verifier.min_similarity) & (guarded(probs, val_first, val_second) >= verifier.threshold)
    report = {
        "fit_pairs": len(fit),
        "val_pairs": len(val),
        "val_auroc": round(auroc(labels, logits), 4),
        "operating_point": point,
        "validation": hit_figures(hits, labels.astype(bool)),
        "train_seconds": round(time.perf_counter() - started, 1),
        "config": asdict(config),
    }
    verifier.info = {
        "backbone": backbone.name, "report": report,
        "calibration": calibration_record(probs, sims, labels, val_first, val_second, config.margin_z),
    }  # fmt: skip
    return verifier, report


def _fit(verifier: PairVerifier, pairs: list[Pair], config: VerifierConfig) -> None:
    import torch
    from tqdm.auto import tqdm

    from shared_scorer.scoring.training import descend, freeze, length_batches, optimizer_for

    net = verifier.model
    freeze(net, config.freeze_layers)
    steps = math.ceil(len(pairs) / config.batch_size) * config.epochs
    optimizer, scheduler = optimizer_for(net, config, steps)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    targets = torch.tensor([float(p.duplicate) for p in pairs])
    bar = tqdm(total=steps, desc="train cache verifier", disable=not config.progress, leave=False)
    net.train()
    for _ in range(config.epochs):
        swap = torch.rand(len(pairs), generator=generator) < 0.5
        lengths = [len(p.cached) + len(p.incoming) for p in pairs]
        for index in length_batches(range(len(pairs)), lengths.__getitem__, config.batch_size, generator):
            first = [pairs[i].incoming if swap[i] else pairs[i].cached for i in index]
            second = [pairs[i].cached if swap[i] else pairs[i].incoming for i in index]
            logits = net(**verifier.encode(first, second)).logits.squeeze(-1)
            loss = loss_fn(logits, targets[index])
            descend(net, optimizer, scheduler, loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
