"""AnswerCache: exact and semantic hits, verifier, scope, TTL, eviction, strategy, stores, embedders."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import numpy as np
import pytest

from shared_scorer import Cascade, StageOutput
from shared_scorer.cache import (
    AnswerCache,
    ConservativeVerifier,
    HashingEmbedder,
    SQLiteStore,
    VectorIndex,
    as_embedder,
    load_pairs,
    normalise_query,
    split_pairs,
)
from shared_scorer.cache.pairs import Pair, hit_figures
from shared_scorer.cache.verifier import choose_operating_point
from shared_scorer.context import CallContext, Scope, build_context
from shared_scorer.errors import ConfigurationError, DataError

ANN = CallContext(Scope("acme", "ann"), "fp")
COST = Decimal("0.0042")


class Permissive:
    """Confirms every candidate at cosine >= min_similarity; records what it was shown."""

    def __init__(self, min_similarity: float = 0.3, answer: bool = True) -> None:
        self.min_similarity = min_similarity
        self.answer = answer
        self.seen: list[tuple[str, list[str], list[float]]] = []

    def confirm(self, query, cached, similarities):
        self.seen.append((query, list(cached), list(similarities)))
        return [self.answer] * len(cached)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def put(cache: AnswerCache, query: str, answer: str, context: CallContext = ANN) -> None:
    cache.store(query, answer, context, model="small", score=0.9, cost_usd=COST)


def test_exact_hit_after_normalisation_costs_nothing_and_names_the_entry():
    cache = AnswerCache(embedder=HashingEmbedder())
    put(cache, "What is the capital of France?", "Paris")
    hit = cache.lookup("  what is the CAPITAL of france ", ANN)
    assert hit is not None and hit.answer == "Paris" and hit.similarity == 1.0
    assert hit.model == "small" and hit.saved_usd == COST and len(hit.entry_id) == 32
    assert cache.lookup("What is the capital of Spain?", ANN) is None
    assert normalise_query("\uff37hat  IS\tit \uff1f!") == "what is it"


def test_semantic_candidate_is_served_only_when_the_verifier_confirms():
    yes, no = Permissive(), Permissive(answer=False)
    cache = AnswerCache(embedder=HashingEmbedder(), verifier=yes)
    put(cache, "How do I learn Python quickly?", "Practice daily")
    hit = cache.lookup("How do I learn Python fast?", ANN)
    assert hit is not None and hit.answer == "Practice daily" and 0.3 <= hit.similarity < 1.0
    assert yes.seen[0][:2] == ("How do I learn Python fast?", ["How do I learn Python quickly?"])
    cache.verifier = no
    assert cache.lookup("How do I learn Python fast?", ANN) is None
    assert len(no.seen) == 1


def test_conservative_default_serves_near_verbatim_only():
    cache = AnswerCache(embedder=HashingEmbedder())
    assert isinstance(cache.verifier, ConservativeVerifier) and cache.verifier.min_similarity == 0.98
    put(cache, "Is 5G safe for children?", "Studies say yes")
    assert cache.lookup("Is 4G safe for children?", ANN) is None  # numbers differ
    assert cache.lookup("children 5G is safe for?", ANN) is None  # same words, different order: cosine < 0.98
    v = ConservativeVerifier()
    assert v.confirm("Why is it safe?", ["Why isn't it safe?", "Why is it safe"], [0.99, 0.99]) == [False, True]


def test_scope_and_fingerprint_isolate_entries_exact_and_semantic():
    cache = AnswerCache(embedder=HashingEmbedder(), verifier=Permissive(min_similarity=-1.0))
    put(cache, "Who is our CEO?", "Alice")
    others = [
        CallContext(Scope("acme", "bob"), "fp"),
        CallContext(Scope("globex", "ann"), "fp"),
        CallContext(Scope("acme", "ann"), "fp2"),
        CallContext(Scope("ann", "acme"), "fp"),
    ]
    for context in others:
        assert cache.lookup("Who is our CEO?", context) is None
        assert cache.lookup("Who is the CEO?", context) is None
    assert cache.lookup("Who is our CEO?", ANN).answer == "Alice"


def test_multi_turn_same_last_question_after_different_turns_misses():
    cache = AnswerCache(embedder=HashingEmbedder())
    scope = Scope("acme", "ann")
    about_paris = build_context(
        [("user", "Tell me about Paris"), ("assistant", "..."), ("user", "How big is it?")], scope=scope
    )
    about_rome = build_context(
        [("user", "Tell me about Rome"), ("assistant", "..."), ("user", "How big is it?")], scope=scope
    )
    put(cache, "How big is it?", "105 km2", about_paris)
    assert cache.lookup("How big is it?", about_rome) is None
    assert cache.lookup("How big is it?", about_paris).answer == "105 km2"
    other_system = build_context([("system", "Answer in French"), ("user", "How big is it?")], scope=scope)
    assert cache.lookup("How big is it?", other_system) is None


def test_ttl_expires_entries_and_purges_them():
    clock = Clock()
    cache = AnswerCache(embedder=HashingEmbedder(), ttl_s=60, clock=clock)
    put(cache, "q one", "a1")
    clock.now += 59
    assert cache.lookup("q one", ANN).answer == "a1"
    clock.now += 2
    assert cache.lookup("q one", ANN) is None
    put(cache, "q two", "a2")  # storing purges what expired
    assert len(cache) == 1 and cache.lookup("q two", ANN).answer == "a2"
    with pytest.raises(ConfigurationError):
        AnswerCache(ttl_s=0)


def test_max_entries_evicts_least_recently_used():
    clock = Clock()
    cache = AnswerCache(embedder=HashingEmbedder(), max_entries=2, clock=clock)
    put(cache, "first question", "1")
    clock.now += 1
    put(cache, "second question", "2")
    clock.now += 1
    assert cache.lookup("first question", ANN).answer == "1"  # touched: now the most recent
    clock.now += 1
    put(cache, "third question", "3")
    assert len(cache) == 2
    assert cache.lookup("second question", ANN) is None
    assert cache.lookup("first question", ANN).answer == "1" and cache.lookup("third question", ANN).answer == "3"


def test_strategy_invalidation_and_clear():
    cache = AnswerCache(embedder=HashingEmbedder(), strategy_id="s1")
    put(cache, "old question", "old")
    assert cache.set_strategy("s2") == 1 and cache.lookup("old question", ANN) is None
    put(cache, "new question", "new")
    bob = CallContext(Scope("acme", "bob"), "fp")
    put(cache, "new question", "new for bob", bob)
    put(cache, "new question", "globex", CallContext(Scope("globex", "ann"), "fp"))
    assert cache.clear(Scope("acme", "bob")) == 1 and cache.lookup("new question", bob) is None
    assert cache.clear(tenant="globex") == 1
    assert cache.invalidate(strategy_id="s2") == 1 and len(cache) == 0


def test_clear_treats_an_empty_user_as_a_real_user(tmp_path):
    """Same figures as the Chroma store's test: "" is a user, not "every user of the tenant"."""
    cache = AnswerCache(SQLiteStore(tmp_path / "cache.db"), embedder=HashingEmbedder())
    nobody, bob = CallContext(Scope("acme", ""), "fp"), CallContext(Scope("acme", "bob"), "fp")
    put(cache, "Who is our CEO?", "for ann")
    put(cache, "Who is our CEO?", "for nobody", nobody)
    put(cache, "Who is our CEO?", "for bob", bob)
    put(cache, "Who is our CEO?", "globex", CallContext(Scope("globex", ""), "fp"))
    assert cache.clear(Scope("acme", "")) == 1 and cache.lookup("Who is our CEO?", nobody) is None
    assert cache.lookup("Who is our CEO?", bob).answer == "for bob"
    assert cache.clear(Scope("", "")) == 0
    assert cache.clear(tenant="acme") == 2 and len(cache) == 1
    assert cache.backend.delete(tenant="globex", scope_key="") == 0
    assert cache.backend.delete(entry_ids=[]) == 0 and len(cache) == 1


def test_cascade_serves_a_hit_at_zero_cost_and_the_ledger_counts_it():
    cache = AnswerCache(embedder=HashingEmbedder())
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.9, prices={"small": (1, 2), "big": (10, 20)},
                      answer_cache=cache)  # fmt: skip
    first = cascade.run("Capital of France?", [lambda: StageOutput("Paris", 100, 10), None], context=ANN)
    assert first.cost_usd == Decimal("0.00012")
    second = cascade.run("capital of france", [None, None], context=ANN)
    assert second.cost_usd == Decimal(0) and second.output.text == "Paris" and second.model == "small"
    trail = second.trail()["cache_hit"]
    assert trail["similarity"] == 1.0 and trail["saved_usd"] == "0.00012" and len(trail["entry_id"]) == 32
    summary = cascade.tracker.summary(decimals=True)
    assert summary["cache_hits"] == 1 and summary["cache_saved_usd"] == Decimal("0.00012")


def test_async_cascade_uses_alookup_and_astore():
    cache = AnswerCache(embedder=HashingEmbedder())
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices={"small": (1, 2)}, answer_cache=cache)

    async def stage():
        return StageOutput("42", 10, 1)

    async def go():
        await cascade.arun("meaning of life?", [stage], context=ANN)
        return await cascade.arun("Meaning of life", [stage], context=ANN)

    assert asyncio.run(go()).cache_hit.answer == "42"


def test_sqlite_file_persists_across_instances(tmp_path):
    path = tmp_path / "cache.sqlite"
    with AnswerCache(path, embedder=HashingEmbedder(), verifier=Permissive()) as cache:
        put(cache, "How tall is Everest?", "8849 m")
    with AnswerCache(SQLiteStore(path), embedder=HashingEmbedder(), verifier=Permissive()) as cache:
        assert cache.lookup("How tall is Everest", ANN).answer == "8849 m"
        assert cache.lookup("How tall is mount Everest?", ANN).answer == "8849 m"
    with (
        AnswerCache(path, embedder=HashingEmbedder(dim=64)) as cache,
        pytest.raises(ConfigurationError, match="dimension"),
    ):
        put(cache, "another", "x")


def test_exact_only_cache_never_embeds():
    cache = AnswerCache(semantic=False)
    put(cache, "Who wrote Emma?", "Jane Austen")
    assert cache.embedder is None and cache.lookup("who wrote emma", ANN).answer == "Jane Austen"
    assert cache.lookup("Who is the author of Emma?", ANN) is None


def test_vector_index_sketch_path_agrees_with_exact_search():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((50, 64))
    vectors = centres[rng.integers(0, 50, 3000)] + 0.6 * rng.standard_normal((3000, 64))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    sketched, exact = VectorIndex(exact_limit=100), VectorIndex(exact_limit=10**9)
    for index in (sketched, exact):
        index.add("s", list(range(3000)), vectors, [None] * 3000)
    queries = vectors[:200] + 0.1 * rng.standard_normal((200, 64)).astype(np.float32)
    for q in queries / np.linalg.norm(queries, axis=1, keepdims=True):
        a = sketched.search("s", q, k=3, min_similarity=0.8, now=0.0)
        b = exact.search("s", q, k=3, min_similarity=0.8, now=0.0)
        assert [i for i, _ in a] == [i for i, _ in b]
    exact.remove(list(range(0, 3000, 2)))
    assert len(exact) == 1500 and all(i % 2 for i, _ in exact.search("s", vectors[1], k=5, min_similarity=0.0, now=0.0))


def test_framework_embeddings_are_accepted_by_duck_typing():
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from llama_index.core.embeddings import MockEmbedding

    for model in (
        DeterministicFakeEmbedding(size=16),
        MockEmbedding(embed_dim=16),
        lambda texts: np.ones((len(texts), 16)),
    ):
        vectors = as_embedder(model).embed(["a", "b"])
        assert vectors.shape == (2, 16) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    cache = AnswerCache(embedder=DeterministicFakeEmbedding(size=16), verifier=Permissive())
    put(cache, "hello there", "hi")
    assert cache.lookup("hello there!", ANN).answer == "hi"
    with pytest.raises(ConfigurationError, match="Embeddings"):
        as_embedder(42)


def test_malformed_pairs_name_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"cached": "a?", "incoming": "b?", "duplicate": 1})
    path.write_text(good + "\n\n" + json.dumps({"cached": "a", "incoming": "", "duplicate": 0}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: field 'incoming'"):
        load_pairs(path)
    path.write_text(good + "\n{oops\n")
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        load_pairs(path)
    path.write_text(json.dumps({"cached": "a", "incoming": "b", "duplicate": 2}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: field 'duplicate'"):
        load_pairs(path)
    path.write_text(good + "\n")
    assert load_pairs(path) == [Pair("a?", "b?", True)]


def test_split_is_a_fixed_hash_and_figures_are_exact():
    pairs = [Pair(f"question {i}", f"other {i}", i % 3 == 0) for i in range(1000)]
    train, heldout = split_pairs(pairs, 0.2)
    assert (len(train), len(heldout)) == (829, 171) and split_pairs(pairs, 0.2) == (train, heldout)
    figures = hit_figures(np.array([1, 1, 1, 0, 0], bool), np.array([1, 1, 0, 1, 0], bool))
    assert figures["duplicate_hit_rate"] == 0.6667 and figures["wrong_hit_share"] == 0.3333 and figures["hits"] == 3


def test_operating_point_holds_the_wrong_share_with_margin():
    rng = np.random.default_rng(0)
    duplicate = rng.random(4000) < 0.4
    probs = np.clip(np.where(duplicate, 0.7, 0.3) + 0.25 * rng.standard_normal(4000), 0, 1)
    sims = np.where(duplicate, 0.85, 0.75) + 0.1 * rng.standard_normal(4000)
    point = choose_operating_point(probs, sims, duplicate, target_wrong_share=0.05, z=1.0)
    hits = (sims >= point["min_similarity"]) & (probs >= point["threshold"])
    figures = hit_figures(hits, duplicate)
    assert figures["wrong_hit_share"] == point["wrong_hit_share"] <= 0.05
    assert figures["duplicate_hit_rate"] == point["duplicate_hit_rate"] > 0.25
    none = choose_operating_point(probs, sims, np.zeros(4000, bool), target_wrong_share=0.05)
    assert none["threshold"] > 1.0 and none["duplicate_hit_rate"] == 0.0
