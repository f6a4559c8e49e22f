"""The framework-free core of frugal-cascade: the cascade loop, scorers, prices and costs.

Nothing here imports LangChain or LlamaIndex; torch and transformers load only with the DistilBERT scorer.
The names below are the cascade, what it returns, the one exception tree, prices and costs, and the hooks a
caller plugs in (``Scorer``, ``AnswerCacheHook``, ``BudgetHook``, ``CostRecorder`` and their async twins);
ARCHITECTURE.md draws where each lives.
"""

from importlib import metadata as _metadata

from shared_scorer.cascade import Cascade
from shared_scorer.context import CallContext, Scope
from shared_scorer.costs import CatalogPrice, Price, TokenPrice, resolve_price
from shared_scorer.errors import (
    BudgetExceeded,
    CascadeError,
    CheckpointError,
    ConfigurationError,
    DataError,
    FrugalError,
    LedgerError,
    ScorerError,
    StageFailure,
    UnknownPriceError,
)
from shared_scorer.outcome import Attempt, CascadeResult, StageOutput, ToolCall
from shared_scorer.protocols import (
    AnswerCacheHook,
    AsyncAnswerCacheHook,
    AsyncBudgetHook,
    AsyncCostRecorder,
    BudgetHook,
    CacheHit,
    CostRecorder,
    Reservation,
)
from shared_scorer.scoring.base import FunctionScorer, Scorer, ScoreRequest
from shared_scorer.steps import StepPolicy
from shared_scorer.tools import ToolCallValidator, ToolSpec
from shared_scorer.tracking import CostTracker

_PYPROJECT_VERSION = "0.1.0"  # kept equal to pyproject.toml by tests/unit/test_conventions.py


def _installed_version() -> str:
    """The installed ``frugal-cascade`` version, or the pyproject one when the source tree is run uninstalled."""
    try:
        return _metadata.version("frugal-cascade")
    except _metadata.PackageNotFoundError:
        return _PYPROJECT_VERSION


__version__ = _installed_version()

__all__ = [
    "AnswerCacheHook",
    "AsyncAnswerCacheHook",
    "AsyncBudgetHook",
    "AsyncCostRecorder",
    "Attempt",
    "BudgetExceeded",
    "BudgetHook",
    "CacheHit",
    "CallContext",
    "Cascade",
    "CascadeError",
    "CascadeResult",
    "CatalogPrice",
    "CheckpointError",
    "ConfigurationError",
    "CostRecorder",
    "CostTracker",
    "DataError",
    "FrugalError",
    "FunctionScorer",
    "LedgerError",
    "Price",
    "Reservation",
    "Scope",
    "ScoreRequest",
    "Scorer",
    "ScorerError",
    "StageFailure",
    "StageOutput",
    "StepPolicy",
    "TokenPrice",
    "ToolCall",
    "ToolCallValidator",
    "ToolSpec",
    "UnknownPriceError",
    "resolve_price",
]
