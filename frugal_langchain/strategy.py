"""Build a :class:`FrugalChatModel` from a strategy saved by ``frugal fit``.

The lead attaches :func:`from_strategy` as ``FrugalChatModel.from_strategy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_scorer.errors import ConfigurationError
from shared_scorer.strategy import Strategy

if TYPE_CHECKING:
    from frugal_langchain.chat_models import FrugalChatModel


def from_strategy(
    cls: type[FrugalChatModel] | None,
    path: str | Path | Strategy,
    stages: Mapping[str, Any],
    *,
    scorer: Any = None,
    budget: float | None = None,
    target_accuracy: float | None = None,
    **kwargs: Any,
) -> FrugalChatModel:
    """A cascade over ``stages[name]`` for each model of the strategy's chain, with its thresholds and scorer.

    ``stages`` maps the strategy's model names to LangChain chat models (extra names are ignored). The
    DistilBERT scorer is loaded from the strategy's scorer folder unless ``scorer`` is given. ``budget`` or
    ``target_accuracy`` picks another point of the saved frontier; the strategy's prices (if any) are used
    unless ``prices=`` is passed. Other keyword arguments go to ``FrugalChatModel``.

    Example:
        .. code-block:: python

            llm = FrugalChatModel.from_strategy(
                "out/strategy.json", stages={"gpt-5-mini": ChatOpenAI(model="gpt-5-mini"), ...}
            )
    """
    if cls is None:
        from frugal_langchain.chat_models import FrugalChatModel

        cls = FrugalChatModel
    strategy = path if isinstance(path, Strategy) else Strategy.load(path)
    if budget is not None or target_accuracy is not None:
        strategy = strategy.select(budget=budget, target_accuracy=target_accuracy)
    missing = [m for m in strategy.chain if m not in stages]
    if missing:
        where = f" ({strategy.path})" if strategy.path else ""
        raise ConfigurationError(
            f"the strategy{where} chains {list(strategy.chain)}; no chat model given for {missing} "
            f"(stages= has {sorted(stages)})"
        )
    if scorer is None:
        from shared_scorer.scoring.distilbert import DistilBertScorer

        scorer = DistilBertScorer.load(strategy.scorer_path(), expect_models=list(strategy.chain))
    prices = kwargs.pop("prices", None)
    if prices is None and strategy.prices:
        prices = {m: (p["input_per_mtok"], p["output_per_mtok"]) for m, p in strategy.prices.items()}
    priced = {m: prices[m] for m in strategy.chain if prices and m in prices} if prices else None
    model_prices = _by_stage_name([stages[m] for m in strategy.chain], list(strategy.chain), priced)
    return cls(
        stages=[stages[m] for m in strategy.chain],
        scorer=_Renamed(scorer, [stages[m] for m in strategy.chain], list(strategy.chain)),
        thresholds=list(strategy.thresholds),
        prices=model_prices,
        **kwargs,
    )


def _by_stage_name(chat_models: list[Any], names: list[str], prices: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Prices keyed by the name the cascade sees for each stage (its chat model's model name)."""
    if not prices:
        return None
    from frugal_langchain.chat_models import stage_name

    return {stage_name(c): prices[n] for c, n in zip(chat_models, names, strict=True) if n in prices}


class _Renamed:
    """Scores with the strategy's model names, whatever the given chat models call themselves."""

    def __init__(self, scorer: Any, chat_models: list[Any], names: list[str]) -> None:
        from frugal_langchain.chat_models import stage_name
        from shared_scorer.scoring.base import as_scorer

        self.inner = as_scorer(scorer)
        self.names = names
        self.by_stage_name = {stage_name(c): n for c, n in zip(chat_models, names, strict=True)}

    def _rename(self, request: Any) -> Any:
        from dataclasses import replace

        if 0 <= request.stage < len(self.names):
            return replace(request, model=self.names[request.stage])
        return replace(request, model=self.by_stage_name.get(request.model, request.model))

    def score(self, request: Any) -> float:
        return float(self.inner.score(self._rename(request)))

    def score_batch(self, requests: Any) -> list[float]:
        return [float(v) for v in self.inner.score_batch([self._rename(r) for r in requests])]
