"""The answer cache: exact then semantic matches, confirmed by a verifier, never across scopes.

>>> from decimal import Decimal
>>> from shared_scorer.cache import AnswerCache, HashingEmbedder
>>> from shared_scorer.context import CallContext, Scope
>>> cache = AnswerCache(embedder=HashingEmbedder())
>>> ctx = CallContext(Scope("acme", "ann"), fingerprint="fp")
>>> cache.store("Capital of France?", "Paris", ctx, model="small", score=0.9, cost_usd=Decimal("0.001"))
>>> cache.lookup("capital of france", ctx).answer
'Paris'

Stores: :class:`SQLiteStore` (embedded, default) and :class:`ChromaStore` (a shared Chroma server).
Verifiers: :class:`ConservativeVerifier` (default), :class:`FeatureVerifier` and :class:`PairVerifier`
(trained with ``frugal train-cache-verifier``; ``AnswerCache(verifier=FOLDER)`` loads either).
``AnswerCache(max_wrong_rate=0.05)`` sets an error bound instead of a threshold; callers report wrong or
confirmed hits with :meth:`AnswerCache.feedback`. Lexical guards (:func:`guard`) run before any verifier.
torch and transformers are imported only when a MiniLM embedder or a :class:`PairVerifier` is used.
"""

from shared_scorer.cache.bound import OperatingPoint
from shared_scorer.cache.cache import AnswerCache
from shared_scorer.cache.chroma_store import ChromaStore
from shared_scorer.cache.embedders import Embedder, HashingEmbedder, LazyMiniLM, as_embedder
from shared_scorer.cache.features import FeatureVerifier
from shared_scorer.cache.guards import guard
from shared_scorer.cache.index import VectorIndex
from shared_scorer.cache.pairs import Pair, load_pairs, split_pairs
from shared_scorer.cache.sqlite_store import SQLiteStore
from shared_scorer.cache.stacked import StackedVerifier, load_verifier
from shared_scorer.cache.store import CacheStore, Entry, normalise_query, query_hash, scope_key
from shared_scorer.cache.verifier import ConservativeVerifier, PairVerifier, Verifier, lexically_same

__all__ = [
    "AnswerCache",
    "CacheStore",
    "ChromaStore",
    "ConservativeVerifier",
    "Embedder",
    "Entry",
    "FeatureVerifier",
    "HashingEmbedder",
    "LazyMiniLM",
    "OperatingPoint",
    "Pair",
    "PairVerifier",
    "SQLiteStore",
    "StackedVerifier",
    "VectorIndex",
    "Verifier",
    "as_embedder",
    "guard",
    "lexically_same",
    "load_pairs",
    "load_verifier",
    "normalise_query",
    "query_hash",
    "scope_key",
    "split_pairs",
]
