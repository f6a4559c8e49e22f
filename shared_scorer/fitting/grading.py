"""Grading metrics for ``frugal collect``: ``metric(answer, reference) -> float in [0, 1]``.

Built in: ``exact_match``, ``normalized_containment``, ``token_f1``, ``numeric_match``,
``multiple_choice``; or any importable ``module:function`` with the same signature.

>>> normalized_containment("The capital is Paris.", "paris")
1.0
>>> token_f1("George Eliot", "Eliot")
0.6666666666666666
>>> numeric_match("It is about 3,000 km", "3000")
1.0
>>> multiple_choice("Reasoning... Final answer: (C)", "C")
1.0
"""

from __future__ import annotations

import importlib
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable

from shared_scorer.errors import ConfigurationError

Metric = Callable[[str, str], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, strip accents, punctuation and articles, collapse whitespace (SQuAD style)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised answer equals the normalised reference."""
    return float(normalize(answer) == normalize(reference))


def normalized_containment(answer: str, reference: str) -> float:
    """1.0 when the normalised reference appears in the normalised answer as whole words."""
    ref = normalize(reference)
    if not ref:
        return 0.0
    return float(f" {ref} " in f" {normalize(answer)} ")


def token_f1(answer: str, reference: str) -> float:
    """F1 of the normalised word bags of answer and reference."""
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


_NUMBER = re.compile(
    r"(?P<num>[-+]?\d+)\s*/\s*(?P<den>\d+)"
    r"|[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
)


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text``, in order (thousands separators and fractions ``a/b`` understood)."""
    out = []
    for match in _NUMBER.finditer(text):
        if match.group("num") is not None:
            if int(match.group("den")) != 0:
                out.append(int(match.group("num")) / int(match.group("den")))
            continue
        try:
            out.append(float(match.group().replace(",", "")))
        except ValueError:
            continue
    return out


def numeric_match(answer: str, reference: str, rel_tol: float = 1e-6) -> float:
    """1.0 when the last number of the answer (e.g. a final ``\\boxed{}`` value) equals the reference's number.

    Falls back to any number of the answer only when the answer has exactly one.
    """
    ref = numbers_in(reference)
    if not ref:
        return exact_match(answer, reference)
    target = ref[-1]
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", answer)
    found = numbers_in(boxed[-1]) if boxed else numbers_in(answer)
    if not found:
        return 0.0
    return float(math.isclose(found[-1], target, rel_tol=rel_tol, abs_tol=1e-9))


_LETTER_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*[:\-]?\s*\(?\**\s*([A-J])\b", re.IGNORECASE),
    re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}"),
    re.compile(r"^\s*\(?([A-J])[\).:]?\s*$", re.MULTILINE),
    re.compile(r"\(([A-J])\)"),
)


def choice_letter(text: str) -> str | None:
    """The multiple-choice letter an answer commits to (the last explicit one), or ``None``."""
    for pattern in _LETTER_PATTERNS:
        found = pattern.findall(text)
        if found:
            return str(found[-1]).upper()
    return None


def multiple_choice(answer: str, reference: str) -> float:
    """1.0 when the answer's chosen letter (A-J) is the reference letter."""
    ref = choice_letter(reference) or reference.strip().strip("()").upper()[:1]
    got = choice_letter(answer)
    return float(got is not None and got == ref)


BUILTIN: dict[str, Metric] = {
    "exact_match": exact_match,
    "normalized_containment": normalized_containment,
    "token_f1": token_f1,
    "numeric_match": numeric_match,
    "multiple_choice": multiple_choice,
}
_ALIASES = {
    "em": "exact_match",
    "contains": "normalized_containment",
    "f1": "token_f1",
    "numeric": "numeric_match",
    "mc": "multiple_choice",
    "normalised_containment": "normalized_containment",
}


def resolve_metric(spec: str | Metric) -> Metric:
    """A built-in metric by name, or ``module:function`` imported; a callable is returned as is."""
    if callable(spec):
        return spec
    name = _ALIASES.get(spec, spec)
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise ConfigurationError(f"unknown metric {spec!r}: use one of {sorted(BUILTIN)} or 'module:function'")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"metric {spec!r}: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigurationError(f"metric {spec!r}: module {module_name!r} has no function {attr!r}")
    return checked(fn, spec)


def checked(fn: Callable[[str, str], object], name: str) -> Metric:
    """Wrap a user metric so that a value outside [0, 1] (or not a number) is a clear error."""

    def metric(answer: str, reference: str) -> float:
        value = fn(answer, reference)
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise ConfigurationError(f"metric {name!r} returned {value!r}; expected a number in [0, 1]")
        return float(value)

    return metric
