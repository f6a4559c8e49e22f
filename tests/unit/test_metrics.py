"""Grading metrics of ``frugal collect``."""

from __future__ import annotations

import pytest

from shared_scorer.errors import ConfigurationError
from shared_scorer.fitting.grading import (
    choice_letter,
    exact_match,
    multiple_choice,
    normalize,
    normalized_containment,
    numeric_match,
    resolve_metric,
    token_f1,
)


def test_normalize() -> None:
    assert normalize("  The Éclair, an  Apple! ") == "eclair apple"


def test_exact_match() -> None:
    assert exact_match("The Beatles.", "beatles") == 1.0
    assert exact_match("The Beatles were a band", "beatles") == 0.0


def test_normalized_containment_needs_whole_words() -> None:
    assert normalized_containment("It was George Eliot, in 1871.", "george eliot") == 1.0
    assert normalized_containment("Eliotson", "Eliot") == 0.0
    assert normalized_containment("anything", "") == 0.0


def test_token_f1() -> None:
    assert token_f1("George Eliot", "George Eliot") == 1.0
    assert token_f1("Mary Ann Evans", "George Eliot") == 0.0
    assert token_f1("the George Eliot novel", "George Eliot") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("So the total is 1,234.", "1234", 1.0),
        ("First 12, then \\boxed{45}", "45", 1.0),
        ("The answer is 3/4", "0.75", 1.0),
        ("Roughly 3.14159", "3.14", 0.0),
        ("no number here", "7", 0.0),
        ("-5 degrees", "-5", 1.0),
    ],
)
def test_numeric_match(answer: str, reference: str, expected: float) -> None:
    assert numeric_match(answer, reference) == expected


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("Let me think... The answer is (B).", "B"),
        ("**Answer: D**", "D"),
        ("Option (A) fails, option (C) holds.\n\nC", "C"),
        ("\\boxed{E}", "E"),
        ("I cannot tell", None),
    ],
)
def test_choice_letter(answer: str, letter: str | None) -> None:
    assert choice_letter(answer) == letter


def test_multiple_choice() -> None:
    assert multiple_choice("The answer is (B).", "B") == 1.0
    assert multiple_choice("The answer is (B).", "(C)") == 0.0


def test_resolve_builtin_alias_and_module_function() -> None:
    assert resolve_metric("token_f1") is token_f1
    assert resolve_metric("em") is exact_match
    metric = resolve_metric("shared_scorer.fitting.grading:exact_match")
    assert metric("Paris", "paris") == 1.0
    with pytest.raises(ConfigurationError, match="unknown metric 'nope'"):
        resolve_metric("nope")
    with pytest.raises(ConfigurationError, match="cannot import module 'no_such_module_x'"):
        resolve_metric("no_such_module_x:f")
    with pytest.raises(ConfigurationError, match="has no function 'missing'"):
        resolve_metric("shared_scorer.fitting.grading:missing")
    bad = resolve_metric("os.path:join")  # returns a string, not a number
    with pytest.raises(ConfigurationError, match="expected a number in"):
        bad("1", "1")
