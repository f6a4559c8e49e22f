"""An adapter model's settings from a saved strategy, the same for both framework adapters.

Framework-free: each adapter passes its stage objects and how it names them; both adapters therefore
take the same settings (:func:`strategy_settings`, used by
:meth:`shared_scorer.adapters.settings.CascadeSettings.from_strategy`) from the same strategy, with the
same output caps (:func:`apply_cap`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared_scorer.costs import price_pairs
from shared_scorer.errors import ConfigurationError
from shared_scorer.scoring.base import ScoreRequest, as_scorer
from shared_scorer.strategy import Strategy, split_cap, split_gate


def strategy_settings(
    path: str | Path | Strategy,
    stages: Mapping[str, Any],
    *,
    name_of: Callable[[Any], str],
    scorer: Any = None,
    max_cost_per_query: float | None = None,
    target_accuracy: float | None = None,
    prices: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``stages``, ``scorer``, ``thresholds``, ``prices`` and ``strategy_id`` of an adapter model.

    ``stages`` maps the strategy's model names to the framework's models (extra names are ignored); a
    model of the chain that is missing is a :class:`ConfigurationError` naming it. The DistilBERT scorer
    is loaded from the strategy's scorer folder unless ``scorer`` is given. ``max_cost_per_query`` or
    ``target_accuracy`` picks another point of the saved frontier without refitting.
    """
    strategy = path if isinstance(path, Strategy) else Strategy.load(path)
    if max_cost_per_query is not None or target_accuracy is not None:
        strategy = strategy.select(budget=max_cost_per_query, target_accuracy=target_accuracy)
    chain = strategy.provider_models  # "model@N" entries: model, its output capped at N tokens
    missing = [m for m in chain if m not in stages]
    if missing:
        where = f" ({strategy.path})" if strategy.path else ""
        raise ConfigurationError(
            f"the strategy{where} chains {list(strategy.chain)}; no model given for {missing} "
            f"(stages= has {sorted(stages)})"
        )
    models = []
    for entry, model in zip(strategy.chain, chain, strict=True):
        cap = split_cap(entry)[1]
        models.append(stages[model] if cap is None else apply_cap(stages[model], cap, model))
    if scorer is None:
        from shared_scorer.scoring.distilbert import DistilBertScorer

        scorer = DistilBertScorer.load(strategy.scorer_path(), expect_models=chain)
    for model, name in zip(models, chain, strict=True):
        if (given := name_of(model)) != name:
            raise ConfigurationError(
                f"stages[{name!r}] is a client of {given!r}: it would be called and priced as {given!r}, not "
                f"as the strategy's {name!r}; key each stage by the model its client calls"
            )
    if prices is None and strategy.prices:
        prices = price_pairs(strategy.prices)
    by_stage = {name_of(s): prices[n] for s, n in zip(models, chain, strict=True) if n in prices} if prices else None
    gates = [split_gate(entry)[1] for entry in strategy.chain]
    return {
        "stages": models,
        "scorer": RenamedScorer(scorer, chain),
        "thresholds": list(strategy.thresholds),
        "gates": gates if any(g is not None for g in gates) else None,
        "prices": by_stage or None,
        "strategy_id": strategy_id(strategy),
    }


def strategy_id(strategy: Strategy) -> str:
    """A short stable id of the decisions a strategy makes (chain, thresholds, scorer, data)."""
    key = json.dumps(
        [strategy.version, list(strategy.chain), list(strategy.thresholds), strategy.scorer, strategy.data_fingerprint]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class RenamedScorer:
    """Scores with the strategy's model names, whatever the given stage objects call themselves."""

    def __init__(self, scorer: Any, names: Sequence[str]) -> None:
        self.inner = as_scorer(scorer)
        self.names = list(names)

    def _rename(self, request: ScoreRequest) -> ScoreRequest:
        return replace(request, model=self.names[request.stage]) if 0 <= request.stage < len(self.names) else request

    def score(self, request: ScoreRequest) -> float:
        return float(self.inner.score(self._rename(request)))

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return [float(v) for v in self.inner.score_batch([self._rename(r) for r in requests])]

    def route_stages(self, query: str) -> list[float | None]:
        """The router's prediction for each stage (by the strategy's model names); ``None`` where unknown."""
        route = getattr(self.inner, "route", None)
        predicted = route(query) if route is not None else {}
        return [predicted.get(name) for name in self.names]


def apply_cap(model: Any, cap: int, name: str = "") -> Any:
    """A copy of ``model`` that writes at most ``cap`` output tokens (its ``max_tokens`` field set)."""
    fields = getattr(type(model), "model_fields", {})
    if "max_tokens" not in fields or not hasattr(model, "model_copy"):
        raise ConfigurationError(
            f"the strategy caps {name or type(model).__name__} at {cap} output tokens, but "
            f"{type(model).__name__} has no max_tokens field; give a model that has one (e.g. ChatOpenAI, "
            "OpenAILike) or refit with --caps none"
        )
    current = getattr(model, "max_tokens", None)
    if isinstance(current, int) and current < cap:
        return model
    return model.model_copy(update={"max_tokens": int(cap)})
