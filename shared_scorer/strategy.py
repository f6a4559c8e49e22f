"""The saved result of ``frugal fit``: which models to chain, their thresholds, and the whole frontier.

A strategy is one JSON file, written beside the scorer folder it names by a relative path::

    out/
      strategy.json      format, version, chain, thresholds, objective, frontier, data fingerprint, prices
      scorer/            the DistilBertScorer checkpoint (see shared_scorer.scoring.distilbert)

A chain entry ``model@N`` is ``model`` with its output capped at ``N`` tokens (:func:`split_cap`). The
frontier types live here, numpy-free, so that loading a strategy never loads the fitting code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared_scorer.errors import CheckpointError, ConfigurationError

FORMAT = "frugal-cascade/strategy"
VERSION = 1
FILE_NAME = "strategy.json"
EPS = 1e-12
"""Accuracy or cost differences below this are ties (they come from summing floats in another order)."""
_CAPPED = re.compile(r"^(?P<model>.+)@(?P<cap>[1-9][0-9]*)$")
_GATED = re.compile(r"^(?P<entry>.+)\|prior>=(?P<gate>[01](?:\.[0-9]+)?)$")


def capped_name(model: str, cap: int) -> str:
    """``model@cap``."""
    return f"{model}@{int(cap)}"


def split_cap(name: str) -> tuple[str, int | None]:
    """``("model", cap)`` of ``model@cap``; ``(name, None)`` for a plain model name.

    >>> split_cap("gemini-3.1-pro-preview@3000"), split_cap("gpt-5-mini")
    (('gemini-3.1-pro-preview', 3000), ('gpt-5-mini', None))
    """
    match = _CAPPED.match(split_gate(name)[0])
    return (match["model"], int(match["cap"])) if match else (split_gate(name)[0], None)


def gated_name(name: str, gate: float) -> str:
    """The chain entry for ``name`` called only when the query prior (the router) is at least ``gate``.

    >>> gated_name("gpt-4o-mini@300", 0.4)
    'gpt-4o-mini@300|prior>=0.4000'
    """
    return f"{name}|prior>={gate:.4f}"


def split_gate(name: str) -> tuple[str, float | None]:
    """``(entry without its gate, gate)``: a gated stage is skipped, at no cost, when the router's predicted
    probability that its model answers correctly is below the gate.

    >>> split_gate("gpt-4o-mini@300|prior>=0.4000"), split_gate("gpt-4o")
    (('gpt-4o-mini@300', 0.4), ('gpt-4o', None))
    """
    match = _GATED.match(name)
    return (match["entry"], float(match["gate"])) if match else (name, None)


@dataclass(frozen=True)
class FrontierPoint:
    """One cascade configuration and what it achieved on the data it was measured on.

    ``reach[l]`` is the share of queries that called stage ``l`` (``reach[0] == 1``); ``1 - reach[l+1]/reach[l]``
    is the acceptance rate of stage ``l``.

    >>> p = FrontierPoint(("small", "big"), (0.7,), accuracy=0.8, cost=0.002)
    >>> FrontierPoint.from_json(p.to_json()) == p
    True
    """

    chain: tuple[str, ...]
    thresholds: tuple[float, ...]
    accuracy: float
    cost: float
    reach: tuple[float, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": list(self.chain),
            "thresholds": list(self.thresholds),
            "accuracy": self.accuracy,
            "cost_per_query": self.cost,
            "reach": list(self.reach),
        }

    @classmethod
    def from_json(cls, data: Any) -> FrontierPoint:
        """Parse :meth:`to_json` output; a malformed point is a ``ValueError`` naming the field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a frontier point must be an object, got {type(data).__name__}")
        chain = data.get("chain")
        if not isinstance(chain, list) or not chain or not all(isinstance(m, str) for m in chain):
            raise ValueError("field 'chain' must be a non-empty list of model names")
        thresholds = data.get("thresholds")
        if not isinstance(thresholds, list) or len(thresholds) != len(chain) - 1:
            raise ValueError(f"field 'thresholds' must be a list of {len(chain) - 1} numbers")
        numbers = {}
        for name in ("accuracy", "cost_per_query"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"field {name!r} must be a finite number, got {value!r}")
            numbers[name] = float(value)
        for t in thresholds:
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
                raise ValueError(f"field 'thresholds' must hold numbers in [0, 1], got {t!r}")
        reach = data.get("reach", [])
        if not isinstance(reach, list) or not all(isinstance(r, int | float) for r in reach):
            raise ValueError("field 'reach' must be a list of numbers")
        return cls(
            tuple(chain),
            tuple(float(t) for t in thresholds),
            numbers["accuracy"],
            numbers["cost_per_query"],
            tuple(float(r) for r in reach),
        )


def pareto_order(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the Pareto-optimal points, cheapest first: each strictly more accurate than every cheaper one.

    Among points of equal cost only the most accurate is kept, and among exact ties the first given (the
    same as :func:`shared_scorer.fitting.frontier.pareto_mask`, without numpy).

    >>> pareto_order([1.0, 2.0, 2.0, 3.0], [0.5, 0.4, 0.7, 0.7])
    [0, 2]
    """
    order = sorted(range(len(costs)), key=lambda i: (float(costs[i]), -float(accuracies[i]), i))
    keep: list[int] = []
    best = -math.inf
    for i in order:
        accuracy = float(accuracies[i])
        if accuracy > best + EPS:
            keep.append(i)
        best = max(best, accuracy)
    return keep


@dataclass
class Frontier:
    """Pareto-optimal cascades, cheapest first, with objective selection.

    >>> f = Frontier([FrontierPoint(("a",), (), 0.6, 1.0), FrontierPoint(("a", "b"), (0.5,), 0.7, 2.0)])
    >>> f.select(budget=1.5).chain, f.select(target_accuracy=0.65).chain
    (('a',), ('a', 'b'))
    """

    points: list[FrontierPoint]

    def __post_init__(self) -> None:
        if self.points:
            index = pareto_order([p.cost for p in self.points], [p.accuracy for p in self.points])
            self.points = [self.points[i] for i in index]

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Any:
        return iter(self.points)

    def best_within(self, budget: float) -> FrontierPoint:
        """The most accurate point whose mean cost per query is at most ``budget``."""
        fits = [p for p in self.points if p.cost <= budget + EPS * max(1.0, abs(budget))]
        if not fits:
            cheapest = self.points[0].cost if self.points else math.nan
            raise ConfigurationError(
                f"no cascade costs at most {budget:.6g} per query; the cheapest costs {cheapest:.6g}"
            )
        return fits[-1]

    def cheapest_reaching(self, target_accuracy: float) -> FrontierPoint:
        """The cheapest point whose accuracy is at least ``target_accuracy``."""
        for point in self.points:
            if point.accuracy >= target_accuracy - EPS:
                return point
        best = self.points[-1].accuracy if self.points else math.nan
        raise ConfigurationError(
            f"no cascade reaches accuracy {target_accuracy:.4g}; the most accurate reaches {best:.4g}"
        )

    def select(self, budget: float | None = None, target_accuracy: float | None = None) -> FrontierPoint:
        """Exactly one objective: highest accuracy within ``budget``, or lowest cost reaching ``target_accuracy``.

        With neither, the most accurate point.
        """
        if budget is not None and target_accuracy is not None:
            raise ConfigurationError("give a budget or a target accuracy, not both")
        if not self.points:
            raise ConfigurationError("the frontier is empty")
        if budget is not None:
            return self.best_within(budget)
        if target_accuracy is not None:
            return self.cheapest_reaching(target_accuracy)
        return self.points[-1]

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.points]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Frontier:
        return cls([FrontierPoint.from_json(p) for p in data])


@dataclass(frozen=True)
class Strategy:
    """A fitted cascade: chain, thresholds, the frontier they were picked from, and what they were fitted on.

    ``scorer`` is the scorer folder relative to the strategy file's folder; ``objective`` is
    ``{"budget": usd}``, ``{"target_accuracy": x}`` or ``{}`` (most accurate); ``prices`` maps each model to
    ``{"input_per_mtok": .., "output_per_mtok": ..}`` where the costs were priced from a prices file.

    >>> import tempfile
    >>> point = FrontierPoint(("small", "big"), (0.8,), accuracy=0.7, cost=0.01)
    >>> s = Strategy.from_frontier(Frontier([FrontierPoint(("small",), (), 0.5, 0.001), point]),
    ...                            scorer="scorer", data_fingerprint="abc", budget=0.02)
    >>> s.chain, s.thresholds
    (('small', 'big'), (0.8,))
    >>> path = s.save(tempfile.mkdtemp())
    >>> Strategy.load(path) == s, Strategy.load(path).select(budget=0.005).chain
    (True, ('small',))
    """

    chain: tuple[str, ...]
    thresholds: tuple[float, ...]
    scorer: str
    frontier: Frontier
    data_fingerprint: str
    objective: dict[str, float] = field(default_factory=dict)
    prices: dict[str, dict[str, str]] = field(default_factory=dict)
    expected: dict[str, float] = field(default_factory=dict)
    """The selected point's accuracy and cost per query on the fitting data (out-of-fold scores)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form facts about the fit (folds, timings, candidate thresholds, scorer metrics)."""
    version: int = VERSION
    path: Path | None = field(default=None, compare=False)
    """Where this strategy was loaded from or saved to (resolves ``scorer``)."""

    @classmethod
    def from_frontier(
        cls,
        frontier: Frontier,
        *,
        scorer: str,
        data_fingerprint: str,
        budget: float | None = None,
        target_accuracy: float | None = None,
        prices: Mapping[str, Mapping[str, str]] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> Strategy:
        """Pick one frontier point by objective (see :meth:`Frontier.select`)."""
        point = frontier.select(budget=budget, target_accuracy=target_accuracy)
        return cls(
            chain=point.chain,
            thresholds=point.thresholds,
            scorer=scorer,
            frontier=frontier,
            data_fingerprint=data_fingerprint,
            objective=_objective(budget, target_accuracy),
            prices={m: dict(p) for m, p in (prices or {}).items()},
            expected={"accuracy": point.accuracy, "cost_per_query": point.cost},
            info=dict(info or {}),
        )

    def select(self, budget: float | None = None, target_accuracy: float | None = None) -> Strategy:
        """The same fit at another frontier point (no refitting): by budget, target accuracy, or most accurate."""
        point = self.frontier.select(budget=budget, target_accuracy=target_accuracy)
        return replace(
            self,
            chain=point.chain,
            thresholds=point.thresholds,
            objective=_objective(budget, target_accuracy),
            expected={"accuracy": point.accuracy, "cost_per_query": point.cost},
        )

    @property
    def provider_models(self) -> list[str]:
        """The chain's provider models, without output caps (``model@N`` is ``model``): the keys
        ``from_strategy``'s ``stages=`` needs."""
        return [split_cap(m)[0] for m in self.chain]

    @property
    def models(self) -> list[str]:
        """Every model that appears somewhere on the frontier."""
        return list(dict.fromkeys(m for p in self.frontier for m in p.chain))

    def scorer_path(self) -> Path:
        """The scorer folder, resolved against the strategy file's folder (or the working directory)."""
        base = self.path.parent if self.path is not None else Path.cwd()
        return (base / self.scorer).resolve()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "chain": list(self.chain),
            "thresholds": list(self.thresholds),
            "scorer": self.scorer,
            "objective": self.objective,
            "expected": self.expected,
            "data_fingerprint": self.data_fingerprint,
            "prices": self.prices,
            "frontier": self.frontier.to_json(),
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON file (``path`` may be a folder: ``strategy.json`` inside it); returns the file."""
        target = Path(path)
        if target.is_dir() or not target.suffix:
            target = target / FILE_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2, allow_nan=False, default=_jsonable)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(target)
        object.__setattr__(self, "path", target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> Strategy:
        """Read a strategy file (or a folder holding ``strategy.json``); anything wrong is a CheckpointError."""
        file = Path(path)
        if file.is_dir():
            file = file / FILE_NAME
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{file}: no such strategy file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{file}: unreadable ({exc})") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_json(data, file)

    @classmethod
    def from_json(cls, data: Any, file: Path) -> Strategy:
        if not isinstance(data, dict):
            raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{file}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != VERSION:
            raise CheckpointError(
                f"{file}: field 'version' is {data.get('version')!r}; this library reads version {VERSION} "
                "(refit with 'frugal fit')"
            )
        chain = _field(data, "chain", list, file)
        if not chain or not all(isinstance(m, str) and m for m in chain):
            raise CheckpointError(f"{file}: field 'chain' must be a non-empty list of model names")
        thresholds = _field(data, "thresholds", list, file)
        if len(thresholds) != len(chain) - 1 or not all(_is_probability(t) for t in thresholds):
            raise CheckpointError(f"{file}: field 'thresholds' must be {len(chain) - 1} number(s) in [0, 1]")
        scorer = _field(data, "scorer", str, file)
        if Path(scorer).is_absolute():
            raise CheckpointError(f"{file}: field 'scorer' must be a path relative to the strategy file")
        fingerprint = _field(data, "data_fingerprint", str, file)
        raw_frontier = _field(data, "frontier", list, file)
        try:
            frontier = Frontier([FrontierPoint.from_json(p) for p in raw_frontier])
        except ValueError as exc:
            raise CheckpointError(f"{file}: field 'frontier': {exc}") from None
        objective = _field(data, "objective", dict, file)
        prices = _field(data, "prices", dict, file)
        expected = data.get("expected", {})
        info = data.get("info", {})
        if not isinstance(expected, dict) or not isinstance(info, dict):
            raise CheckpointError(f"{file}: fields 'expected' and 'info' must be JSON objects")
        return cls(
            chain=tuple(chain),
            thresholds=tuple(float(t) for t in thresholds),
            scorer=scorer,
            frontier=frontier,
            data_fingerprint=fingerprint,
            objective=objective,
            prices=prices,
            expected=expected,
            info=info,
            version=VERSION,
            path=file,
        )


def _field(data: Mapping[str, Any], name: str, kind: type, file: Path) -> Any:
    if name not in data:
        raise CheckpointError(f"{file}: missing field {name!r}")
    value = data[name]
    if not isinstance(value, kind):
        raise CheckpointError(f"{file}: field {name!r} must be a JSON {_kind_name(kind)}, got {value!r:.80}")
    return value


def _kind_name(kind: type) -> str:
    names: dict[type, str] = {list: "array", dict: "object", str: "string"}
    return names.get(kind, kind.__name__)


def _is_probability(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _objective(budget: float | None, target_accuracy: float | None) -> dict[str, float]:
    if budget is not None:
        if not math.isfinite(budget) or budget < 0:
            raise ConfigurationError(f"budget must be a non-negative number, got {budget!r}")
        return {"budget": float(budget)}
    if target_accuracy is not None:
        return {"target_accuracy": float(target_accuracy)}
    return {}


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Sequence):
        return list(value)
    return str(value)
