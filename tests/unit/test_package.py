"""Package hygiene: the core imports no framework and no torch; public names are sorted and real."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from inspect import ismodule
from pathlib import Path

import pytest

import frugal_langchain
import frugal_llamaindex
import shared_scorer
from shared_scorer import errors

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


@pytest.mark.parametrize("package", [shared_scorer, frugal_langchain, frugal_llamaindex])
def test_all_is_sorted_and_names_exactly_the_public_names(package):
    """httpx's rule: ``__all__`` is sorted, and is exactly the public names the package defines (every
    name imported into ``__init__`` is exported, and nothing exported is missing)."""
    public = [name for name, value in vars(package).items() if not name.startswith("_") and not ismodule(value)]
    assert package.__all__ == sorted(package.__all__)
    assert package.__all__ == sorted(public)
    for name in package.__all__:
        assert getattr(package, name).__name__ == name


def test_the_core_exports_its_extension_points():
    """The hooks ARCHITECTURE.md names as extension points can be imported from the package itself."""
    assert {
        "AnswerCacheHook",
        "AsyncAnswerCacheHook",
        "AsyncBudgetHook",
        "AsyncCostRecorder",
        "BudgetHook",
        "CacheHit",
        "CallContext",
        "CostRecorder",
        "Price",
        "Reservation",
        "Scope",
        "Scorer",
    } <= set(shared_scorer.__all__)


# --- the exception tree drawn in errors.py is the real one ---------------------------------------------------

_BRANCH = re.compile(r"^((?:[│ ] {3})*)[├└]── (\w+)")


def drawn_tree(docstring: str) -> dict[str, str | None]:
    """``{error: parent}`` from a tree drawn as in ``errors.py`` (a root line, then ``├──``/``└──`` branches
    nested four columns a level; lines with no branch continue a description)."""
    lines = docstring.split("\n\n")[1].splitlines()
    tree: dict[str, str | None] = {lines[0].split()[0]: None}
    parents = [lines[0].split()[0]]
    for line in lines[1:]:
        match = _BRANCH.match(line)
        if match:
            depth = len(match.group(1)) // 4 + 1
            del parents[depth:]
            tree[match.group(2)] = parents[-1]
            parents.append(match.group(2))
    return tree


def every_project_module() -> list[str]:
    names = []
    for package in ("shared_scorer", "frugal_langchain", "frugal_llamaindex"):
        root = Path(importlib.import_module(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            if parts[-1] != "__main__":
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def real_tree() -> dict[str, str | None]:
    """``{error: parent}`` for FrugalError and every subclass the three packages define (every module is
    imported first, so an error class defined anywhere is seen)."""
    for name in every_project_module():
        importlib.import_module(name)
    tree: dict[str, str | None] = {"FrugalError": None}
    todo = [errors.FrugalError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in ("shared_scorer", "frugal_langchain", "frugal_llamaindex"):
                assert sub.__module__ == "shared_scorer.errors", f"{sub.__qualname__} is defined in {sub.__module__}"
                tree[sub.__name__] = cls.__name__
                todo.append(sub)
    return tree


def test_the_tree_drawn_in_errors_is_the_real_one():
    assert drawn_tree(errors.__doc__ or "") == real_tree()


def test_a_drawn_tree_is_read_with_its_nesting():
    drawing = """One tree.

Base
├── A      text
│   ├── A1  text
│   │       more text
│   └── A2
│       └── A21
└── B      text
           more text
"""
    assert drawn_tree(drawing) == {"Base": None, "A": "Base", "A1": "A", "A2": "A", "A21": "A2", "B": "Base"}
