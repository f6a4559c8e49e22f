"""Benchmark the DistilBERT scorer against the embedding + logistic-regression baseline; prints JSON.

    python benchmarks/scorer.py [--train FILE --test FILE] [--data-root DIR] [--shared | --per-model]

Trains on the train file with the offline backbone (MiniLM converted to DistilBERT), then reports per
candidate model the test AUROC and ECE of the scorer, the int8-quantised scorer and the baseline, the
training time, single-pair latency and batched throughput on this machine, and the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("FRUGAL_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="datasets folder (default: $FRUGAL_DATASETS or ../shared/datasets)")
    parser.add_argument("--dataset", default="simpleqa")
    parser.add_argument("--train", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--backbone", default="minilm")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--per-model", dest="per_model", action="store_true", default=None)
    variant.add_argument("--shared", dest="per_model", action="store_false")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--freeze-layers", type=int)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--calibration")
    parser.add_argument("--limit-queries", type=int, help="use only this many train/test queries (quick runs)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--save", type=Path, help="also save the trained scorer here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from shared_scorer.fitting.data import load_records
    from shared_scorer.scoring.base import ScoreRequest
    from shared_scorer.scoring.distilbert import DistilBertScorer
    from shared_scorer.scoring.training import TrainConfig, auroc, expected_calibration_error

    root = data_root(args.data_root) / "recorded" / args.dataset
    train = load_records(args.train or root / "train.jsonl")
    test = load_records(args.test or root / "test.jsonl")
    if args.limit_queries:
        keep_train = sorted({r.query_id for r in train})[: args.limit_queries]
        keep_test = sorted({r.query_id for r in test})[: args.limit_queries]
        train = [r for r in train if r.query_id in set(keep_train)]
        test = [r for r in test if r.query_id in set(keep_test)]

    config = TrainConfig(backbone=args.backbone, num_threads=args.threads, progress=not args.quiet)
    for name in ("per_model", "epochs", "freeze_layers", "max_length", "calibration"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    started = time.perf_counter()
    scorer = DistilBertScorer.train(train, config)
    train_seconds = time.perf_counter() - started
    if args.save:
        scorer.save(args.save)

    requests = [ScoreRequest(r.query, r.answer, model=r.model) for r in test]
    t0 = time.perf_counter()
    logits = scorer.logits(requests)
    probs = scorer.calibrate(requests, logits)
    test_seconds = time.perf_counter() - t0
    q8 = scorer.quantized()
    probs8 = np.array(q8.score_batch(requests))

    baseline_probs = None
    baseline_seconds = None
    if not args.no_baseline:
        from shared_scorer.scoring.baseline import EmbeddingLogRegScorer

        t0 = time.perf_counter()
        baseline = EmbeddingLogRegScorer().fit(train)
        baseline_probs = np.array(baseline.score_batch(requests))
        baseline_seconds = time.perf_counter() - t0

    per_model = {}
    for model in scorer.models:
        index = [i for i, r in enumerate(test) if r.model == model]
        labels = np.array([test[i].correct for i in index])
        entry = {
            "auroc": round(auroc(labels, logits[index]), 4),
            "ece": round(expected_calibration_error(labels, probs[index]), 4),
            "int8_auroc": round(auroc(labels, probs8[index]), 4),
            "val_auroc": round(scorer.metrics[model]["val_auroc"], 4),
            "test_rows": len(index),
            "accuracy": round(float((labels >= 0.5).mean()), 4),
        }
        if baseline_probs is not None:
            entry["baseline_auroc"] = round(auroc(labels, baseline_probs[index]), 4)
            entry["baseline_ece"] = round(expected_calibration_error(labels, baseline_probs[index]), 4)
        per_model[model] = entry

    single, batch_rate = latency(scorer, requests, args.threads)
    single8, batch_rate8 = latency(q8, requests, args.threads)
    result = {
        "dataset": args.dataset,
        "variant": "per-model" if config.per_model else "shared",
        "backbone": args.backbone,
        "train_rows": len(train),
        "test_rows": len(test),
        "config": {k: getattr(config, k) for k in ("epochs", "freeze_layers", "max_length", "batch_size", "lr")}
        | {"calibration": config.calibration},
        "models": per_model,
        "mean_auroc": round(float(np.mean([m["auroc"] for m in per_model.values()])), 4),
        "mean_int8_auroc": round(float(np.mean([m["int8_auroc"] for m in per_model.values()])), 4),
        "mean_baseline_auroc": (
            round(float(np.mean([m["baseline_auroc"] for m in per_model.values()])), 4)
            if baseline_probs is not None
            else None
        ),
        "models_beating_baseline": (
            sum(m["auroc"] > m["baseline_auroc"] for m in per_model.values()) if baseline_probs is not None else None
        ),
        "train_seconds": round(train_seconds, 1),
        "test_scoring_seconds": round(test_seconds, 1),
        "baseline_fit_and_score_seconds": round(baseline_seconds, 1) if baseline_seconds else None,
        "latency_single_p50_ms": single["p50"],
        "latency_single_p95_ms": single["p95"],
        "throughput_batch32_pairs_per_s": batch_rate,
        "int8_latency_single_p50_ms": single8["p50"],
        "int8_throughput_batch32_pairs_per_s": batch_rate8,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    print(json.dumps(result, indent=2))
    return 0


def latency(scorer: object, requests: list, threads: int) -> tuple[dict[str, float], float]:
    """Single-pair p50/p95 in ms over 200 pairs, and pairs/s over batches of 32."""
    scorer.num_threads = threads  # type: ignore[attr-defined]
    sample = requests[:: max(1, len(requests) // 200)][:200]
    scorer.score(sample[0])  # type: ignore[attr-defined]
    times = []
    for request in sample:
        t0 = time.perf_counter()
        scorer.score(request)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    pool = requests[:: max(1, len(requests) // 640)][:640]
    t0 = time.perf_counter()
    for start in range(0, len(pool), 32):
        scorer.score_batch(pool[start : start + 32])  # type: ignore[attr-defined]
    rate = len(pool) / (time.perf_counter() - t0)
    return {"p50": round(statistics.median(times), 2), "p95": round(p95, 2)}, round(rate, 1)


if __name__ == "__main__":
    raise SystemExit(main())
