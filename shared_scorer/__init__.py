"""The framework-free core of frugal-cascade: the cascade loop, scorers, prices and costs.

Nothing here imports LangChain or LlamaIndex; torch and transformers load only with the DistilBERT scorer.
"""

from shared_scorer.cascade import Cascade
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
from shared_scorer.scoring.base import FunctionScorer, Scorer, ScoreRequest
from shared_scorer.tools import ToolCallValidator, ToolSpec
from shared_scorer.tracking import CostTracker

__all__ = [
    "Attempt",
    "BudgetExceeded",
    "Cascade",
    "CascadeError",
    "CascadeResult",
    "CatalogPrice",
    "CheckpointError",
    "ConfigurationError",
    "CostTracker",
    "DataError",
    "FrugalError",
    "FunctionScorer",
    "LedgerError",
    "Price",
    "ScoreRequest",
    "Scorer",
    "ScorerError",
    "StageFailure",
    "StageOutput",
    "TokenPrice",
    "ToolCall",
    "ToolCallValidator",
    "ToolSpec",
    "UnknownPriceError",
    "resolve_price",
]
