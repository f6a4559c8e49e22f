"""Every docstring example in the core runs and shows what it claims."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "shared_scorer.cascade",
    "shared_scorer.context",
    "shared_scorer.costs",
    "shared_scorer.limits",
    "shared_scorer.streaming",
    "shared_scorer.strategy",
    "shared_scorer.tracking",
    "shared_scorer.tools",
    "shared_scorer.scoring.base",
    "shared_scorer.scoring.oracle",
    "shared_scorer.scoring.signals",
    "shared_scorer.budget",
    "shared_scorer.budget.tracker",
    "shared_scorer.budget.urls",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
