"""The conventions of the partner packages: ``__version__``, token counting, quiet loading, LangSmith params."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

import frugal_langchain
import frugal_llamaindex
import shared_scorer

ROOT = Path(__file__).resolve().parents[2]


def pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^version = "([^"]+)"$', text, re.MULTILINE).group(1)


@pytest.mark.parametrize("package", [shared_scorer, frugal_langchain, frugal_llamaindex])
def test_every_package_has_the_distribution_version(package):
    assert package.__version__ == metadata.version("frugal-cascade") == pyproject_version()


def test_the_fallback_version_is_the_pyproject_one(monkeypatch):
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(shared_scorer._metadata, "version", missing)
    assert shared_scorer._installed_version() == pyproject_version() == "0.1.0"
