"""Package hygiene: the core imports no framework and no torch; public names are sorted and real."""

from __future__ import annotations

import subprocess
import sys

import pytest

import frugal_langchain
import shared_scorer

CORE_MODULES = [
    "shared_scorer",
    "shared_scorer.cascade",
    "shared_scorer.costs",
    "shared_scorer.fitting.data",
    "shared_scorer.errors",
    "shared_scorer.tools",
    "shared_scorer.scoring",
    "shared_scorer.scoring.base",
    "shared_scorer.server",
    "shared_scorer.cache",
    "shared_scorer.budget",
    "shared_scorer.cli",
]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_imports_no_framework_and_no_torch(module):
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('langchain_core', 'llama_index', 'torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imported {out}"


def test_langchain_adapter_does_not_import_torch():
    code = "import sys, frugal_langchain; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"


@pytest.mark.parametrize(
    ("module", "numpy_too"),
    [("frugal_langchain", True), ("shared_scorer.strategy", True), ("frugal_llamaindex", False)],
)
def test_the_request_path_loads_no_fitting_code(module, numpy_too):
    """Building a cascade from a strategy needs no offline fitting code, nor numpy (LlamaIndex itself
    imports numpy, so only the fitting code is checked there)."""
    code = (
        f"import sys, {module}\n"
        "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith('shared_scorer.fitting')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("[]" if numpy_too else "['numpy']"), f"{module} imported {out}"


@pytest.mark.parametrize("package", [shared_scorer, frugal_langchain])
def test_all_is_sorted_and_every_name_exists(package):
    assert package.__all__ == sorted(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None
