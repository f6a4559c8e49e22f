"""Per-caller operating points: one fitted strategy, a frontier point per tier, and per-tenant settings.

A fit saves a whole frontier; a tier names one point of it, by a budget (highest accuracy at most that
many USD per query) or a target accuracy (the cheapest point reaching it; ``"best_single"``: the accuracy
of the best single model on the fitting data). A call names its tier itself (LangChain
``config={"metadata": {"tier": ...}}``, LlamaIndex ``tier=``, ``frugal serve``: the API key's ``"tier"``),
else its tenant's tier applies, else the model's own point. Per tenant, ``share_cache_within_tenant``
lets the tenant's users share cached answers; budgets stay per user.

Framework-free: both adapters and ``frugal serve`` resolve tiers here, so they cannot disagree.

>>> from shared_scorer.strategy import Frontier, FrontierPoint, Strategy
>>> frontier = Frontier([FrontierPoint(("small",), (), 0.6, 0.001), FrontierPoint(("small", "big"), (0.7,), 0.8, 0.01)])
>>> strategy = Strategy.from_frontier(frontier, scorer="scorer", data_fingerprint="-")
>>> tiers = parse_tiers({"free": {"budget": 0.002}, "paid": {"target_accuracy": 0.75}})
>>> {name: point.chain for name, point in tier_strategies(strategy, tiers).items()}
{'free': ('small',), 'paid': ('small', 'big')}
>>> tenants = parse_tenants({"acme": {"tier": "paid", "share_cache_within_tenant": True}}, tiers)
>>> resolve_tier(None, "acme", tenants, tiers), resolve_tier("free", "acme", tenants, tiers)
('paid', 'free')
>>> resolve_tier(None, "globex", tenants, tiers), shares_cache("acme", tenants), shares_cache("globex", tenants)
('', True, False)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from shared_scorer.errors import ConfigurationError
from shared_scorer.strategy import Strategy

__all__ = [
    "BEST_SINGLE",
    "TenantSettings",
    "Tier",
    "best_single_accuracy",
    "parse_tenants",
    "parse_tiers",
    "resolve_tier",
    "shares_cache",
    "tier_chains",
    "tier_strategies",
]

BEST_SINGLE = "best_single"
"""``target_accuracy`` of a tier that must be as accurate as the best single model, at the least cost."""


@dataclass(frozen=True)
class Tier:
    """One operating point of a strategy: ``budget`` (USD per query) or ``target_accuracy`` (a number in
    [0, 1] or :data:`BEST_SINGLE`); neither: the most accurate point."""

    name: str
    budget: float | None = None
    target_accuracy: float | str | None = None

    @classmethod
    def parse(cls, name: object, value: object) -> Tier:
        """``{"budget": usd}``, ``{"target_accuracy": x | "best_single"}`` or ``{}``; anything else is a
        :class:`ConfigurationError` naming the tier and the field."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"tiers: a tier name must be a non-empty string, got {name!r}")
        where = f"tiers[{name!r}]"
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"{where}: expected {{'budget': usd}} or {{'target_accuracy': x}}, got {value!r}")
        unknown = sorted(set(value) - {"budget", "target_accuracy"})
        if unknown:
            raise ConfigurationError(f"{where}: unknown field(s) {unknown}; a tier has 'budget' or 'target_accuracy'")
        budget, target = value.get("budget"), value.get("target_accuracy")
        if budget is not None and target is not None:
            raise ConfigurationError(f"{where}: give 'budget' or 'target_accuracy', not both")
        if budget is not None and not (_number(budget) and math.isfinite(budget) and budget >= 0):
            raise ConfigurationError(f"{where}: 'budget' must be a number of USD per query >= 0, got {budget!r}")
        if target is not None and target != BEST_SINGLE and not (_number(target) and 0.0 <= target <= 1.0):
            raise ConfigurationError(
                f"{where}: 'target_accuracy' must be a number in [0, 1] or {BEST_SINGLE!r}, got {target!r}"
            )
        return cls(
            name,
            None if budget is None else float(budget),
            target if target is None or isinstance(target, str) else float(target),
        )

    def select(self, strategy: Strategy) -> Strategy:
        """``strategy`` at this tier's frontier point (no refitting); a point out of reach is a
        :class:`ConfigurationError` naming the tier."""
        target = self.target_accuracy
        if target == BEST_SINGLE:
            target = best_single_accuracy(strategy)
        try:
            return strategy.select(budget=self.budget, target_accuracy=target)  # type: ignore[arg-type]
        except ConfigurationError as exc:
            raise ConfigurationError(f"tiers[{self.name!r}]: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        if self.budget is not None:
            return {"budget": self.budget}
        return {} if self.target_accuracy is None else {"target_accuracy": self.target_accuracy}


@dataclass(frozen=True)
class TenantSettings:
    """What one tenant chose: its ``tier`` (``None``: the model's own point) and whether its users share
    cached answers (``share_cache_within_tenant``; each user's spend is still charged to that user)."""

    tier: str | None = None
    share_cache_within_tenant: bool = False


def parse_tiers(value: Mapping[str, Any] | None) -> dict[str, Tier]:
    """``{"free": {"budget": 0.002}, "paid": {"target_accuracy": "best_single"}}`` as :class:`Tier` s."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"tiers: expected a mapping of tier names to objectives, got {value!r}")
    return {name: item if isinstance(item, Tier) else Tier.parse(name, item) for name, item in value.items()}


def parse_tenants(value: Mapping[str, Any] | None, tiers: Collection[str]) -> dict[str, TenantSettings]:
    """``{"acme": {"tier": "paid", "share_cache_within_tenant": true}}`` as :class:`TenantSettings`; a tier
    not in ``tiers`` is a :class:`ConfigurationError` naming the tenant."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"tenants: expected a mapping of tenant names to settings, got {value!r}")
    out = {}
    for tenant, item in value.items():
        where = f"tenants[{tenant!r}]"
        if isinstance(item, TenantSettings):
            settings = item
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - {"tier", "share_cache_within_tenant"})
            if unknown:
                raise ConfigurationError(
                    f"{where}: unknown field(s) {unknown}; a tenant has 'tier' and 'share_cache_within_tenant'"
                )
            tier, share = item.get("tier"), item.get("share_cache_within_tenant", False)
            if tier is not None and not isinstance(tier, str):
                raise ConfigurationError(f"{where}: 'tier' must be a tier name, got {tier!r}")
            if not isinstance(share, bool):
                raise ConfigurationError(f"{where}: 'share_cache_within_tenant' must be true or false, got {share!r}")
            settings = TenantSettings(tier, share)
        else:
            raise ConfigurationError(
                f"{where}: expected {{'tier': ..., 'share_cache_within_tenant': ...}}, got {item!r}"
            )
        if settings.tier is not None and settings.tier not in tiers:
            raise ConfigurationError(f"{where}: tier {settings.tier!r} is not one of the tiers {sorted(tiers)}")
        out[str(tenant)] = settings
    return out


def resolve_tier(tier: object, tenant: str, tenants: Mapping[str, TenantSettings], tiers: Collection[str]) -> str:
    """The tier a call runs in: the call's own ``tier`` wins, then its tenant's; ``""`` is the model's own
    point. A tier the model does not have is a :class:`ConfigurationError` naming it."""
    if tier is None or tier == "":
        settings = tenants.get(tenant)
        return settings.tier or "" if settings is not None else ""
    if not isinstance(tier, str) or tier not in tiers:
        known = f"one of {sorted(tiers)}" if tiers else "none (give tiers= to from_strategy)"
        raise ConfigurationError(f"the call names tier {tier!r}; this model's tiers are {known}")
    return tier


def shares_cache(tenant: str, tenants: Mapping[str, TenantSettings]) -> bool:
    """Whether ``tenant``'s users share cached answers (see :class:`TenantSettings`)."""
    settings = tenants.get(tenant)
    return settings is not None and settings.share_cache_within_tenant


def tier_strategies(strategy: Strategy, tiers: Mapping[str, Tier]) -> dict[str, Strategy]:
    """``strategy`` at each tier's frontier point."""
    return {name: tier.select(strategy) for name, tier in tiers.items()}


def tier_chains(strategy: Strategy, tiers: Mapping[str, Tier]) -> list[str]:
    """Every chain entry (``model`` or ``model@N``) of ``strategy``'s own point and of each tier's, once, in
    order: the stages a server must build to answer every tier."""
    chains = [strategy.chain, *(s.chain for s in tier_strategies(strategy, tiers).values())]
    return list(dict.fromkeys(entry for chain in chains for entry in chain))


def best_single_accuracy(strategy: Strategy) -> float:
    """The accuracy of the most accurate single model on the data ``strategy`` was fitted on (``frugal fit``
    saves each model's figures in ``info["single_models"]``)."""
    singles = strategy.info.get("single_models")
    accuracies = [s.get("accuracy") for s in singles.values()] if isinstance(singles, Mapping) else []
    accuracies = [a for a in accuracies if _number(a)]
    if not accuracies:
        where = f" {strategy.path}" if strategy.path else ""
        raise ConfigurationError(
            f"target_accuracy {BEST_SINGLE!r} needs each model's accuracy, which the strategy{where} does not "
            "record (info['single_models'], saved by 'frugal fit' since tiers exist): refit, or give a number"
        )
    return float(max(accuracies))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
