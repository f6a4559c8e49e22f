"""Every docstring example in the three packages runs and shows what it claims.

The modules are found by walking the package folders for ``>>>`` (no hand-written list), so a new example is
run the day it is written. Examples that need an outside server say ``# doctest: +SKIP``; a module whose
every example is skipped must be named in ``ONLY_SKIPPED`` with the reason.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared_scorer", "frugal_langchain", "frugal_llamaindex")
ONLY_SKIPPED = {"shared_scorer.cache.chroma_store": "needs a Chroma server"}


def modules_with_examples(root: Path = ROOT) -> list[str]:
    """The dotted names of the modules whose source holds a ``>>>`` example."""
    names = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                parts = path.relative_to(root).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def test_the_walk_finds_the_examples():
    assert len(MODULES) >= 40
    assert {"shared_scorer.cascade", "shared_scorer.jsonl", "shared_scorer.budget"} <= set(MODULES)
    assert set(ONLY_SKIPPED) <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    assert sum(len(test.examples) for test in tests) > 0, f"{name}: a '>>>' outside any docstring doctest sees"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, "".join(report)
    assert (attempted == 0) == (name in ONLY_SKIPPED), f"{name}: {attempted} examples ran"
