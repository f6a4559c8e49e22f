"""One exception tree for the whole project.

FrugalError
├── ConfigurationError      bad construction: stages, thresholds, prices, options
│   └── UnknownPriceError   a stage whose model has no known price and none was given
├── DataError               a malformed dataset line, file or field (names file and line)
├── CheckpointError         a missing, corrupt or mismatched scorer checkpoint / strategy
├── ScorerError             a scorer that raised or returned something that is not a probability
├── BudgetExceeded          a stage could not be afforded; ``.limit`` names the limit
├── LedgerError             a ledger could not be reached or failed (fails closed: no provider call)
└── CascadeError            every stage failed; ``.failures`` holds each stage's cause, ``__cause__``
                            the last stage's exception

Every class of the tree is defined here, and nowhere else; ``tests/unit/test_package.py`` holds the drawing
above equal to the real subclasses of :class:`FrugalError` (names and parents).

Every error survives a pickle round trip with its fields (a worker process can hand it back); an error
carrying a cascade call's ``result`` keeps it when the result pickles, and drops it otherwise.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def _picklable(state: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` that pickle (an attached result or exception may hold a socket, say)."""
    kept = {}
    for key, value in state.items():
        try:
            pickle.dumps(value)
        except Exception:
            continue
        kept[key] = value
    return kept


class FrugalError(Exception):
    """Base class of every error this library raises on purpose."""

    def _init_args(self) -> tuple[Any, ...]:
        """The arguments that rebuild this error (its ``__init__``'s, which may differ from ``args``)."""
        return self.args

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._init_args(), _picklable(self.__dict__))


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
    """A ledger backend could not be reached or failed; the message names the backend and its address.

    Budgets fail closed: when a reservation cannot be made, no provider is called.
    """


class BudgetExceeded(FrugalError):
    """A stage could not be afforded; ``limit`` names the limit that would be crossed."""

    def __init__(self, limit: str, message: str) -> None:
        self.limit = limit
        super().__init__(message)

    def _init_args(self) -> tuple[Any, ...]:
        return (self.limit, str(self))


@dataclass(frozen=True)
class StageFailure:
    """Why one stage produced no usable answer."""

    stage: int
    model: str
    kind: str
    """``error`` (the provider call raised) or ``invalid`` (the answer failed validation)."""
    message: str
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception the provider call raised (``None`` for an invalid answer, or after a pickle round
    trip when the exception does not pickle)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "exception": _picklable({"e": self.exception}).get("e")}


class CascadeError(FrugalError):
    """Every stage failed: no answer can be returned.

    ``failures`` lists each stage's cause in order; ``exceptions`` holds the exceptions stages raised, and
    ``__cause__`` is the last of them (so a traceback shows it).
    """

    def __init__(self, failures: Sequence[StageFailure]) -> None:
        self.failures = tuple(failures)
        lines = [f"stage {f.stage} ({f.model}): {f.kind}: {f.message}" for f in self.failures]
        super().__init__("every stage of the cascade failed:\n  " + "\n  ".join(lines))
        if self.exceptions:
            self.__cause__ = self.exceptions[-1]

    @property
    def exceptions(self) -> tuple[BaseException, ...]:
        """The exceptions stages raised, in stage order (invalid answers raised none)."""
        return tuple(f.exception for f in self.failures if f.exception is not None)

    def _init_args(self) -> tuple[Any, ...]:
        return (self.failures,)
