"""The answer cache on labelled question pairs; prints JSON (the figures of ``frugal cache-bench``).

    python benchmarks/cache.py [--pairs ../shared/datasets/qqp/pairs_dev.jsonl] [--verifier DIR]
                               [--split heldout] [--json OUT] [--sizes 10000,100000]

Reports duplicate_hit_rate and wrong_hit_share for the conservative default (and a trained verifier),
the precision-recall curve, and lookup latency p50/p99 of the embedded store with 10,000 and 100,000
entries (embedding and verification timed apart). See ``shared_scorer.cache.evaluation``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared_scorer.cli import main  # noqa: E402


def run(argv: list[str]) -> int:
    defaults = {"--pairs": str(REPO.parent / "shared" / "datasets" / "qqp" / "pairs_dev.jsonl"), "--json": "cache.json"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv = [*argv, flag, value]
    return main(["cache-bench", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
