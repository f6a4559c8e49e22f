"""The known traps of semantic caches, through the real AnswerCache: none may hit.

Negation (GPTCache #694: "is X safe" vs "is X not safe" at cosine 0.83-0.9997), swapped numbers, dates and
units, another entity in the same template, swapped roles, and the same question under another user or
another system prompt (LiteLLM #19575, vLLM semantic-router #2134). Each trap is asked of a cache holding
only the cached question, with the real MiniLM embedder, under the default verifier, the default with
``max_wrong_rate=0.05``, and a verifier that calls *every* pair the same question (with a validation curve,
so ``max_wrong_rate`` applies to it too): the lexical guards alone must stop the traps, whatever the
verifier says. The controls (true rewordings) must still hit where the verifier allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import pytest

from shared_scorer.cache import AnswerCache, ConservativeVerifier, LazyMiniLM
from shared_scorer.cache.guards import guard
from shared_scorer.cache.verifier import ThresholdedVerifier
from shared_scorer.context import CallContext, Scope

TRAPS = [
    ("negation", "Is ibuprofen safe during pregnancy?", "Is ibuprofen not safe during pregnancy?"),
    ("negation", "Why is my laptop charging?", "Why isn't my laptop charging?"),
    ("numbers", "Is 7 greater than 5?", "Is 5 greater than 7?"),
    ("numbers", "What is 15 percent of 200?", "What is 20 percent of 150?"),
    ("numbers", "What was the price on 1/2/2020?", "What was the price on 2/1/2020?"),
    ("numbers", "How long is a 10 minute walk?", "How long is a ten minute walk?  20"),
    ("units", "How far is 5 km?", "How far is 5 miles?"),
    ("units", "How much is 100 dollars in rupees?", "How much is 100 euros in rupees?"),
    ("units", "Can I learn to swim in 2 weeks?", "Can I learn to swim in 2 months?"),
    ("dates", "What happened on 5 May 2020?", "What happened on 5 June 2020?"),
    ("dates", "What is the weather in Paris tomorrow?", "What is the weather in Paris today?"),
    ("entities", "What is the capital of France?", "What is the capital of Spain?"),
    ("entities", "Who is the CEO of Google?", "Who is the CEO of Microsoft?"),
    ("roles", "Did Nadal beat Federer at Wimbledon?", "Did Federer beat Nadal at Wimbledon?"),
    ("roles", "How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
    ("roles", "How do I convert ethanol to ethanoic acid?", "How do I convert ethanoic acid to ethanol?"),
    ("roles", "Is a flight from London to Paris cheaper?", "Is a flight from Paris to London cheaper?"),
]  # fmt: skip

CONTROLS = [
    ("How do I learn Python quickly?", "How can I learn Python quickly"),
    ("What is the capital of France?", "what is the capital of france"),
    ("Is ibuprofen safe during pregnancy?", "is ibuprofen safe during pregnancy"),
]
ASKED = CallContext(Scope("acme", "ann"), fingerprint="system-prompt-1")


class CallsEverythingTheSame(ThresholdedVerifier):
    """A verifier that is always sure two questions are the same (P = 0.99), with a validation curve on
    which the 0.05 bound picks cosine >= 0.6 and P >= 0.99."""

    def __init__(self) -> None:
        self.threshold, self.min_similarity = 0.99, 0.6
        n = 200
        self.info = {
            "calibration": {
                "probs": [0.99] * n, "sims": [0.95] * n, "duplicate": [True] * n, "guard_passes": [True] * n,
                "margin_z": 1.0,
            }
        }  # fmt: skip

    def probabilities(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        return np.full(len(first), 0.99)


@pytest.fixture(scope="module")
def minilm() -> LazyMiniLM:
    return LazyMiniLM()


def caches(embedder: object) -> dict[str, AnswerCache]:
    return {
        "default": AnswerCache(embedder=embedder),
        "default, max_wrong_rate=0.05": AnswerCache(embedder=embedder, max_wrong_rate=0.05),
        "says-same, max_wrong_rate=0.05": AnswerCache(
            embedder=embedder, verifier=CallsEverythingTheSame(), max_wrong_rate=0.05
        ),
        "says-same, no bound": AnswerCache(embedder=embedder, verifier=CallsEverythingTheSame()),
    }


def _store(cache: AnswerCache, question: str, context: CallContext = ASKED) -> None:
    cache.store(question, "the cached answer", context, model="small", score=0.9, cost_usd=Decimal("0.002"))


@pytest.mark.parametrize(("kind", "cached", "incoming"), TRAPS, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(TRAPS)])
def test_no_trap_is_served_by_any_verifier(minilm, kind, cached, incoming):
    assert guard(cached, incoming) == kind
    assert guard(incoming, cached) == kind
    for name, cache in caches(minilm).items():
        _store(cache, cached)
        assert cache.lookup(incoming, ASKED) is None, f"{name} served {incoming!r} the answer of {cached!r}"


def test_the_says_same_verifier_serves_rewordings_so_the_guards_are_what_stop_the_traps(minilm):
    cache = AnswerCache(embedder=minilm, verifier=CallsEverythingTheSame(), max_wrong_rate=0.05)
    assert (cache.operating_point.min_similarity, cache.operating_point.threshold) == (0.6, 0.99)
    for cached, incoming in CONTROLS:
        cache.clear()
        _store(cache, cached)
        hit = cache.lookup(incoming, ASKED)
        assert hit is not None and hit.answer == "the cached answer"


def test_default_verifier_serves_a_near_verbatim_rewording_with_and_without_the_bound(minilm):
    for cache in (AnswerCache(embedder=minilm), AnswerCache(embedder=minilm, max_wrong_rate=0.05)):
        _store(cache, "How do I learn Python quickly?")
        hit = cache.lookup("How can I learn Python quickly", ASKED)
        assert hit is not None and hit.similarity >= 0.98


@pytest.mark.parametrize(
    "other",
    [
        CallContext(Scope("acme", "bob"), fingerprint="system-prompt-1"),  # another user
        CallContext(Scope("acme", "ann"), fingerprint="system-prompt-2"),  # another system prompt
        CallContext(Scope("globex", "ann"), fingerprint="system-prompt-1"),  # another tenant
    ],
    ids=["other-user", "other-system-prompt", "other-tenant"],
)
def test_the_same_question_under_another_scope_never_hits(minilm, other):
    for name, cache in caches(minilm).items():
        _store(cache, "What is the capital of France?")
        assert cache.lookup("What is the capital of France?", other) is None, name  # exact
        assert cache.lookup("what's the capital of France", other) is None, name  # semantic
        assert cache.lookup("What is the capital of France?", ASKED) is not None, name


def test_the_strictest_bound_turns_the_default_verifier_to_exact_matches_only(minilm):
    cache = AnswerCache(embedder=minilm, max_wrong_rate=0.01)
    assert ConservativeVerifier.estimated_wrong_share == 0.05
    _store(cache, "How do I learn Python quickly?")
    assert cache.lookup("How can I learn Python quickly", ASKED) is None
    assert cache.lookup("how do i learn python quickly", ASKED) is not None
