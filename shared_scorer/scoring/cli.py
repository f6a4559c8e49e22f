"""``frugal train-scorer``: fine-tune and save a DistilBertScorer from a recorded JSON Lines file."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def add_train_scorer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-scorer`` on an ``argparse`` sub-parser set; ``args.run`` is ``run_train_scorer``."""
    from shared_scorer.cli import fraction, non_negative_int, positive_float, positive_int
    from shared_scorer.scoring.training import CALIBRATIONS, TrainConfig

    defaults = TrainConfig()
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train-scorer",
        help="fine-tune the DistilBERT scorer on recorded answers",
        description="Fine-tune, calibrate and save a DistilBertScorer; prints the validation metrics as JSON.",
    )
    parser.add_argument("--train", type=Path, required=True, help="recorded JSON Lines file")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--backbone", default=None, help="minilm (offline), tiny-random, a folder or a hub name")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--lr", type=positive_float, default=defaults.lr)
    parser.add_argument("--max-length", type=positive_int, default=defaults.max_length)
    parser.add_argument("--freeze-layers", type=non_negative_int, default=defaults.freeze_layers)
    parser.add_argument("--val-fraction", type=fraction, default=defaults.val_fraction)
    parser.add_argument("--seed", type=non_negative_int, default=defaults.seed)
    parser.add_argument("--calibration", choices=CALIBRATIONS, default=defaults.calibration)
    parser.add_argument("--num-threads", type=positive_int, default=None)
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--per-model", dest="per_model", action="store_true", help="one network per model")
    variant.add_argument("--shared", dest="per_model", action="store_false", help="one model-aware network")
    parser.set_defaults(per_model=defaults.per_model, run=run_train_scorer)
    parser.add_argument("--models", nargs="+", default=None, help="train for these candidate models only")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_train_scorer(args: argparse.Namespace) -> int:
    """Train with the parsed options, save to ``--out`` and print the validation metrics as JSON."""
    from shared_scorer.data import load_records
    from shared_scorer.scoring.distilbert import DistilBertScorer
    from shared_scorer.scoring.training import TrainConfig

    config = TrainConfig(
        backbone=args.backbone,
        per_model=args.per_model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        freeze_layers=args.freeze_layers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        calibration=args.calibration,
        num_threads=args.num_threads,
        models=args.models,
        progress=not args.no_progress,
    )
    scorer = DistilBertScorer.train(load_records(args.train), config)
    scorer.save(args.out)
    report = {
        "out": str(args.out),
        "variant": "per-model" if config.per_model else "shared",
        "train_seconds": round(float(scorer.info["train_seconds"]), 1),
        "validation": {
            model: {k: (None if math.isnan(v) else round(v, 4)) for k, v in figures.items()}
            for model, figures in scorer.metrics.items()
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
