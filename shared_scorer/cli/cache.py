"""``frugal train-cache-verifier`` and ``frugal cache-bench``::

frugal train-cache-verifier --pairs FILE --out DIR     the recommended verifier (see its --help)
frugal cache-bench --pairs FILE --json OUT [--verifier DIR] [--split heldout]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from shared_scorer.cli._args import fraction, non_negative_int, positive_float, positive_int
from shared_scorer.errors import ConfigurationError, DataError


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sizes


def add_parsers(subparsers: Any) -> None:
    """Register ``train-cache-verifier`` and ``cache-bench`` on the ``frugal`` sub-parsers."""
    from shared_scorer.cache.verifier_training import VerifierConfig

    d = VerifierConfig()
    train = subparsers.add_parser(
        "train-cache-verifier",
        help="train the answer cache's pair verifier on labelled question pairs",
        description="Train the answer cache's verifier and print its validation figures as JSON. The defaults "
        "give the recommended verifier: trained on ALL pairs of --pairs (--heldout-fraction 0) but for a fixed "
        "hash-chosen validation slice (--val-fraction 0.15) that picks the cosine floor and threshold and is "
        "saved as the curve AnswerCache(max_wrong_rate=...) picks its point from; kind 'features': an MLP "
        "(256, 64) averaged with boosted trees (HistGradientBoosting), both on the cache's MiniLM embeddings "
        "(u*v, |u-v|, cosine) and 22 lexical features (seconds to minutes on a CPU; with --vectors, "
        "precomputed embeddings). With --pair-verifier DIR (a --kind distilbert folder trained on the same "
        "file) the default kind becomes 'stacked': that cross-encoder and the features model combined by a "
        "logistic regression fitted on the validation slice. Measure it on pairs it never saw with "
        "frugal cache-bench --max-wrong-rate.",
    )
    train.add_argument("--pairs", type=Path, required=True, help='JSON Lines of {"cached","incoming","duplicate"}')
    train.add_argument("--out", type=Path, required=True, help="folder to write the verifier to")
    train.add_argument(
        "--heldout-fraction", type=fraction, default=0.0, help="pairs kept out of training and reported apart"
    )
    train.add_argument(
        "--val-fraction", type=fraction, default=d.val_fraction, help="validation slice for the operating point"
    )
    train.add_argument("--hidden", type=_sizes, default=[256, 64], help="features kind: the MLP's hidden layers")
    train.add_argument("--alpha", type=positive_float, default=1e-3, help="features kind: the MLP's L2 penalty")
    train.add_argument("--no-trees", action="store_true", help="features kind: the MLP alone (no boosted trees)")
    train.add_argument("--backbone", default=d.backbone, help="minilm (offline), tiny-random, a folder or hub name")
    train.add_argument("--epochs", type=positive_int, default=d.epochs)
    train.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    train.add_argument("--lr", type=positive_float, default=d.lr)
    train.add_argument("--max-length", type=positive_int, default=d.max_length)
    train.add_argument("--freeze-layers", type=non_negative_int, default=d.freeze_layers)
    train.add_argument("--max-pairs", type=positive_int, default=None, help="train on the first N training pairs only")
    train.add_argument("--target-wrong-share", type=fraction, default=d.target_wrong_share)
    train.add_argument("--margin-z", type=float, default=d.margin_z)
    train.add_argument("--seed", type=non_negative_int, default=d.seed)
    train.add_argument("--num-threads", type=positive_int, default=None)
    train.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm", help="the cache's embedder")
    train.add_argument(
        "--kind",
        choices=("features", "distilbert", "stacked"),
        default=None,
        help="features: an MLP on the cache's embeddings and lexical checks (fast); distilbert: a fine-tuned "
        "DistilBERT pair classifier (slow on CPU); stacked: both, combined (the most duplicates served at the "
        "target wrong-hit share); default: features, or stacked with --pair-verifier",
    )
    train.add_argument(
        "--pair-verifier",
        type=Path,
        help="with --kind stacked: reuse this distilbert verifier folder (trained on the same pairs) instead of "
        "training one",
    )
    train.add_argument("--vectors", type=Path, help="precomputed embeddings (.npz of texts and vectors)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=run_train_verifier)

    bench = subparsers.add_parser(
        "cache-bench",
        help="hit rate, wrong-hit share and latency of the answer cache on labelled pairs",
        description="Store each pair's cached question in a fresh cache, ask its incoming question, and report "
        "duplicate_hit_rate, wrong_hit_share and the precision-recall curve for the conservative default and "
        "(with --verifier) a trained verifier; then lookup latency with 10,000 and 100,000 entries.",
    )
    bench.add_argument("--pairs", type=Path, required=True)
    bench.add_argument("--json", type=Path, required=True, help="write the figures here")
    bench.add_argument("--verifier", type=Path, help="a folder written by train-cache-verifier")
    bench.add_argument(
        "--max-wrong-rate",
        type=fraction,
        default=None,
        help="error bound: the operating point comes from the verifier's validation curve (as "
        "AnswerCache(max_wrong_rate=...)); the JSON's top-level duplicate_hit_rate and wrong_hit_share are "
        "measured under it",
    )
    bench.add_argument("--split", choices=("all", "heldout", "train"), default="all")
    bench.add_argument("--heldout-fraction", type=fraction, default=0.2)
    bench.add_argument("--limit", type=positive_int, help="use the first N pairs (after the split)")
    bench.add_argument("--sizes", type=_sizes, default=[10_000, 100_000], help="store sizes for latency")
    bench.add_argument("--latency-queries", type=positive_int, default=500)
    bench.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    bench.add_argument("--vectors", type=Path, help="precomputed embeddings (.npz of texts and vectors)")
    bench.set_defaults(run=run_cache_bench)


def _embedder(name: str) -> object | None:
    from shared_scorer.cache.embedders import HashingEmbedder

    return HashingEmbedder() if name == "hashing" else None


def run_train_verifier(args: argparse.Namespace) -> int:
    """Train, save, and print validation and held-out figures as JSON."""
    import numpy as np

    from shared_scorer.cache.embedders import as_embedder
    from shared_scorer.cache.evaluation import MemoEmbedder
    from shared_scorer.cache.pairs import hit_figures, load_pairs, split_pairs
    from shared_scorer.cache.verifier import guarded
    from shared_scorer.cache.verifier_training import VerifierConfig, train_verifier

    if not 0.0 <= args.heldout_fraction < 1.0:
        raise ConfigurationError(f"--heldout-fraction must be in [0, 1), got {args.heldout_fraction}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ConfigurationError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    kind = args.kind or ("stacked" if args.pair_verifier else "features")
    if args.pair_verifier and kind != "stacked":
        raise ConfigurationError(f"--pair-verifier is for --kind stacked, not --kind {kind}")
    features = {"hidden": tuple(args.hidden), "alpha": args.alpha, "trees": not args.no_trees, "lexical": 2}
    config = VerifierConfig(
        backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        max_length=args.max_length, freeze_layers=args.freeze_layers, max_pairs=args.max_pairs,
        target_wrong_share=args.target_wrong_share, margin_z=args.margin_z, seed=args.seed,
        num_threads=args.num_threads, progress=not args.no_progress, val_fraction=args.val_fraction,
    )  # fmt: skip
    train, heldout = split_pairs(load_pairs(args.pairs), args.heldout_fraction)
    embedder = MemoEmbedder(as_embedder(_embedder(args.embedder)), [], args.vectors)
    started = time.perf_counter()
    verifier: Any
    if kind != "distilbert":
        train = train[: args.max_pairs] if args.max_pairs else train
    if kind == "features":
        from shared_scorer.cache.features import FeatureVerifier

        verifier, report = FeatureVerifier.train(
            train, embedder=embedder, target_wrong_share=args.target_wrong_share, margin_z=args.margin_z,
            seed=args.seed, val_fraction=args.val_fraction, **features,
        )  # fmt: skip
    elif kind == "stacked":
        from shared_scorer.cache.stacked import StackedVerifier
        from shared_scorer.cache.verifier import PairVerifier

        pair = PairVerifier.load(args.pair_verifier) if args.pair_verifier else None
        verifier, report = StackedVerifier.train(
            train, pair=pair, pair_config=config, embedder=embedder, val_fraction=config.val_fraction,
            target_wrong_share=args.target_wrong_share, margin_z=args.margin_z, seed=args.seed,
            feature_options=features,
        )  # fmt: skip
    else:
        verifier, report = train_verifier(train, config, embedder=embedder)
    verifier.save(args.out)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["heldout"] = None  # by default every pair trains (measure on another file with cache-bench)
    if heldout:
        vectors = embedder.embed([t for p in heldout for t in (p.cached, p.incoming)])
        sims = np.einsum("ij,ij->i", vectors[0::2], vectors[1::2])
        scores = verifier.scores([p.incoming for p in heldout], [p.cached for p in heldout], sims)
        scores = guarded(scores, [p.cached for p in heldout], [p.incoming for p in heldout])
        report["heldout"] = hit_figures(scores >= verifier.threshold, np.array([p.duplicate for p in heldout]))
    report["out"] = str(args.out)
    report["kind"] = kind
    json.dump(report, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def run_cache_bench(args: argparse.Namespace) -> int:
    """Run the bench and write (and print) its JSON."""
    from shared_scorer.cache.evaluation import run_bench
    from shared_scorer.cache.pairs import load_pairs, split_pairs
    from shared_scorer.cache.stacked import load_verifier

    pairs = load_pairs(args.pairs)
    if args.split != "all":
        train, heldout = split_pairs(pairs, args.heldout_fraction)
        pairs = heldout if args.split == "heldout" else train
    pairs = pairs[: args.limit] if args.limit else pairs
    if not pairs:
        raise DataError(
            f"{args.pairs}: no pairs in the {args.split!r} split (--heldout-fraction {args.heldout_fraction})"
        )
    verifier = load_verifier(args.verifier) if args.verifier else None
    started = time.perf_counter()
    result = run_bench(
        pairs,
        verifier=verifier,
        embedder=_embedder(args.embedder),
        sizes=args.sizes,
        latency_queries=args.latency_queries,
        vectors=args.vectors,
        max_wrong_rate=args.max_wrong_rate,
    )
    result["command"] = {"pairs": str(args.pairs), "split": args.split, "verifier": str(args.verifier or "")}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0
