"""One exception tree for the whole project.

FrugalError
├── ConfigurationError      bad construction: stages, thresholds, prices, options
│   └── UnknownPriceError   a stage whose model has no known price and none was given
├── DataError               a malformed dataset line, file or field (names file and line)
├── CheckpointError         a missing, corrupt or mismatched scorer checkpoint / strategy
├── ScorerError             a scorer that raised or returned something that is not a probability
└── CascadeError            every stage failed; ``.failures`` holds each stage's cause
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FrugalError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigurationError(FrugalError, ValueError):
    """The cascade, a model or an option was configured wrongly."""


class UnknownPriceError(ConfigurationError):
    """No price is known for a model and none was given explicitly."""


class DataError(FrugalError, ValueError):
    """A dataset file, line or field is malformed."""


class CheckpointError(FrugalError):
    """A scorer checkpoint or strategy file is missing, corrupt or from another version."""


class ScorerError(FrugalError):
    """The scorer raised, or returned a value that is not a probability in [0, 1]."""


class LedgerError(FrugalError):
    """A ledger backend could not be reached or failed; the message names the backend and its address."""


@dataclass(frozen=True)
class StageFailure:
    """Why one stage produced no usable answer."""

    stage: int
    model: str
    kind: str
    """``error`` (the provider call raised) or ``invalid`` (the answer failed validation)."""
    message: str


class CascadeError(FrugalError):
    """Every stage failed: no answer can be returned.

    ``failures`` lists each stage's cause in order.
    """

    def __init__(self, failures: Sequence[StageFailure]) -> None:
        self.failures = tuple(failures)
        lines = [f"stage {f.stage} ({f.model}): {f.kind}: {f.message}" for f in self.failures]
        super().__init__("every stage of the cascade failed:\n  " + "\n  ".join(lines))
