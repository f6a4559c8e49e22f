"""Property: no lookup ever returns an entry stored under another scope (tenant, user, fingerprint).

Random stores and lookups over many scopes, with near-identical scope names (swapped tenant and user,
case and whitespace variants, separators) and a verifier that confirms every candidate, so that only the
scoping (and the lexical guards, which run before any verifier) stands between a lookup and another scope's
entries. Exact hits must also be found whenever the same question was stored in the same scope.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from shared_scorer.cache import AnswerCache, HashingEmbedder, normalise_query
from shared_scorer.cache.guards import passes
from shared_scorer.context import CallContext, Scope

NAMES = ["acme", "Acme", "acme ", "ann", "bob", "a|b", "a", "b", '"', ""]
FINGERPRINTS = ["", "fp1", "fp2"]
QUESTIONS = [
    "Who is the CEO?", "who is the ceo", "Who is our CEO?", "What is my salary?", "What is my salary",
    "Reset my password", "How big is it?", "How big is Paris?",
]  # fmt: skip

contexts = st.builds(
    lambda t, u, f: CallContext(Scope(t, u), f),
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.sampled_from(FINGERPRINTS),
)
operations = st.lists(
    st.tuples(st.sampled_from(["store", "lookup"]), contexts, st.sampled_from(QUESTIONS)), min_size=1, max_size=40
)


class ConfirmAll:
    min_similarity = -1.0

    def confirm(self, query, cached, similarities):
        return [True] * len(cached)


EMBEDDER = HashingEmbedder(dim=64)


def key(context: CallContext) -> tuple[str, str, str]:
    return (context.scope.tenant, context.scope.user, context.fingerprint)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_no_lookup_crosses_scopes(ops):
    cache = AnswerCache(embedder=EMBEDDER, verifier=ConfirmAll())
    owner: dict[str, tuple[str, str, str]] = {}
    stored: dict[tuple[str, str, str], set[str]] = {}
    asked: dict[tuple[str, str, str], set[str]] = {}
    for n, (op, context, question) in enumerate(ops):
        if op == "store":
            before = {e.id for e in _entries(cache)}
            cache.store(question, f"answer {n}", context, model="m", score=1.0, cost_usd=Decimal("0.01"))
            (new,) = {e.id for e in _entries(cache)} - before
            owner[new] = key(context)
            stored.setdefault(key(context), set()).add(normalise_query(question))
            asked.setdefault(key(context), set()).add(question)
            continue
        hit = cache.lookup(question, context)
        if hit is not None:
            assert owner[hit.entry_id] == key(context), "a lookup returned another scope's entry"
        else:
            # a scope with entries must hit (the verifier confirms all) unless the guards reject every one
            assert not any(passes(question, q) for q in asked.get(key(context), set()))
        if normalise_query(question) in stored.get(key(context), set()):
            assert hit is not None and hit.similarity == 1.0


def _entries(cache: AnswerCache):
    conn = cache.backend._conn  # type: ignore[attr-defined]
    return [type("E", (), {"id": row[0]}) for row in conn.execute("SELECT id FROM entries")]
