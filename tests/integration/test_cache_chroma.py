"""The shared Chroma store: a real ``chroma run`` server on 127.0.0.1, started for these tests."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from shared_scorer.cache import AnswerCache, ChromaStore, HashingEmbedder
from shared_scorer.context import CallContext, Scope
from tests.conftest import require


@pytest.fixture(scope="module")
def chroma() -> Iterator[dict[str, Any]]:
    from urllib.parse import urlsplit

    from shared_scorer.cache.chroma_server import chroma_binary, chroma_server

    try:
        import chromadb
    except ImportError:
        chromadb = None
    require(
        chromadb is not None and chroma_binary() is not None, "chromadb (with its 'chroma' command) is not installed"
    )
    assert chromadb is not None
    with chroma_server() as url:
        port = int(urlsplit(url).port or 0)
        client = chromadb.HttpClient(host="127.0.0.1", port=port)
        yield {"host": "127.0.0.1", "port": port, "client": client}


class Confirm:
    min_similarity = 0.5

    def confirm(self, query, cached, similarities):
        return [True] * len(cached)


ANN = CallContext(Scope("acme", "ann"), "fp")


def put(cache: AnswerCache, query: str, answer: str, context: CallContext = ANN) -> None:
    cache.store(query, answer, context, model="small", score=0.9, cost_usd=Decimal("0.003"))


def replica(chroma: dict[str, Any], prefix: str, **options: Any) -> AnswerCache:
    """A cache of one app replica: its own client and store over the one shared server."""
    store = ChromaStore(chroma["host"], chroma["port"], prefix=prefix)
    return AnswerCache(store, embedder=HashingEmbedder(), verifier=Confirm(), **options)


def test_replicas_share_hits_exact_and_semantic(chroma):
    one, two = replica(chroma, "t1"), replica(chroma, "t1")
    put(one, "How tall is Mount Everest?", "8849 m")
    exact = two.lookup("how tall is mount everest", ANN)
    assert exact is not None and exact.answer == "8849 m" and exact.similarity == 1.0
    assert exact.saved_usd == Decimal("0.003") and exact.model == "small"
    semantic = two.lookup("How tall is Mount Everest exactly?", ANN)  # "in metres" would add a unit: guarded
    assert semantic is not None and semantic.answer == "8849 m" and 0.5 <= semantic.similarity < 1.0
    assert len(two) == 1


def test_feedback_counts_live_on_the_server_and_stay_in_their_scope(chroma):
    one, two = replica(chroma, "t5"), replica(chroma, "t5")
    put(one, "How tall is Mount Everest?", "8849 m")
    hit = two.lookup("How tall is Mount Everest exactly?", ANN)
    assert hit is not None
    assert two.feedback(hit.entry_id, False, CallContext(Scope("acme", "bob"), "fp")) is None  # another user
    assert one.entry_state(hit.entry_id, ANN)["wrong"] == 0
    state = two.feedback(hit, False, ANN)
    assert state is not None and (state["wrong"], state["wrong_score"]) == (1, 1.0)
    seen = one.entry_state(hit.entry_id, ANN)  # the other replica reads the same counts
    assert seen is not None and (seen["wrong"], seen["wrong_score"], seen["threshold"]) == (1, 1.0, 1.0 + 2**-52)
    assert one.lookup("How tall is Mount Everest exactly?", ANN) is None  # a confirm-only verifier scores 1.0
    assert one.lookup("how tall is mount everest", ANN) is not None  # the exact question still hits
    assert one.feedback(hit.entry_id, True, ANN)["confirmed"] == 1


def test_scopes_never_cross_on_the_server(chroma):
    cache = replica(chroma, "t2")
    put(cache, "Who is our CEO?", "Alice")
    put(cache, "Who is our CEO?", "Bob", CallContext(Scope("globex", "ann"), "fp"))
    for context in (CallContext(Scope("acme", "bob"), "fp"), CallContext(Scope("acme", "ann"), "fp2"),
                    CallContext(Scope("initech", "ann"), "fp")):  # fmt: skip
        assert cache.lookup("Who is our CEO?", context) is None
        assert cache.lookup("Who's our CEO?", context) is None
    assert cache.lookup("Who is our CEO", ANN).answer == "Alice"
    assert cache.lookup("Who's our CEO?", CallContext(Scope("globex", "ann"), "fp")).answer == "Bob"
    names = {c if isinstance(c, str) else c.name for c in chroma["client"].list_collections()}
    assert len({n for n in names if n.startswith("t2-")}) == 2  # one collection per tenant


def test_ttl_eviction_and_invalidation_on_the_server(chroma):
    now = [1000.0]
    cache = replica(chroma, "t3", ttl_s=60, max_entries=2, strategy_id="s1", clock=lambda: now[0])
    put(cache, "first question", "1")
    now[0] += 1
    put(cache, "second question", "2")
    now[0] += 1
    assert cache.lookup("first question", ANN).answer == "1"  # touched
    now[0] += 1
    put(cache, "third question", "3")
    assert len(cache) == 2 and cache.lookup("second question", ANN) is None
    now[0] += 100
    assert cache.lookup("first question", ANN) is None
    assert cache.purge() == 2 and len(cache) == 0
    put(cache, "fourth question", "4")
    assert cache.set_strategy("s2") == 1 and len(cache) == 0


def test_clear_treats_an_empty_user_as_a_real_user(chroma):
    """``clear(Scope("acme", ""))`` removes the entries of user "" only, as the SQLite store does."""
    cache = replica(chroma, "t4")
    nobody = CallContext(Scope("acme", ""), "fp")
    bob = CallContext(Scope("acme", "bob"), "fp")
    put(cache, "Who is our CEO?", "for ann")
    put(cache, "Who is our CEO?", "for nobody", nobody)
    put(cache, "Who is our CEO?", "for bob", bob)
    put(cache, "Who is our CEO?", "globex", CallContext(Scope("globex", ""), "fp"))
    assert cache.clear(Scope("acme", "")) == 1
    assert cache.lookup("Who is our CEO?", nobody) is None
    assert cache.lookup("Who is our CEO?", ANN).answer == "for ann"
    assert cache.lookup("Who is our CEO?", bob).answer == "for bob"
    assert cache.clear(Scope("", "")) == 0  # the tenant "" is a tenant too, and it has nothing
    assert cache.clear(tenant="acme") == 2 and len(cache) == 1  # the whole tenant: said explicitly
    assert cache.lookup("Who is our CEO?", CallContext(Scope("globex", ""), "fp")).answer == "globex"
    assert cache.backend.delete(tenant="globex", scope_key="") == 0  # "" matches no scope key, it is not "any"
    assert cache.backend.delete(entry_ids=[]) == 0  # no ids: nothing, not everything
    assert len(cache) == 1
