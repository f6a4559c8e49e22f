"""Shared test setup: offline hub, the shared datasets, and 'required in CI' checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FRUGAL_DATASETS", REPO.parent / "shared" / "datasets"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when a required component is missing locally; fail in CI, where it must be there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def datasets() -> Path:
    require((DATASETS / "recorded").is_dir(), f"shared datasets not found at {DATASETS}")
    return DATASETS
