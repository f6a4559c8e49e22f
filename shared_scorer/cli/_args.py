"""Argument types shared by the ``frugal`` subcommands: argparse's usage error names what was expected."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An ``argparse`` type: ``convert(text)`` when ``ok`` holds, else argparse's usage error naming ``expected``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a number > 0")
fraction = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]
