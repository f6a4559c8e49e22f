"""Caller tiers (shared_scorer.adapters.tiers), the tenant-wide cache scope, and how frugal serve reads tiers."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from shared_scorer.adapters.tiers import (
    TenantSettings,
    Tier,
    best_single_accuracy,
    parse_tenants,
    parse_tiers,
    resolve_tier,
    shares_cache,
    tier_chains,
    tier_strategies,
)
from shared_scorer.cache import AnswerCache
from shared_scorer.cli.serve import tier_options
from shared_scorer.context import CallContext, Scope
from shared_scorer.errors import ConfigurationError
from shared_scorer.server.gateway import parse_request, read_keys
from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

POINTS = [
    FrontierPoint(("small",), (), accuracy=0.60, cost=0.001),
    FrontierPoint(("small", "big@64"), (0.5,), accuracy=0.80, cost=0.004),
    FrontierPoint(("small", "big"), (0.7,), accuracy=0.85, cost=0.006),
]
SINGLES = {"small": {"accuracy": 0.60}, "big": {"accuracy": 0.78}}


def strategy(info: dict | None = None) -> Strategy:
    info = {"single_models": SINGLES} if info is None else info
    return Strategy.from_frontier(Frontier(POINTS), scorer="scorer", data_fingerprint="f", info=info)


def test_each_tier_is_a_point_of_the_one_frontier():
    tiers = parse_tiers({"free": {"budget": 0.002}, "paid": {"target_accuracy": "best_single"}, "top": {}})
    chosen = tier_strategies(strategy(), tiers)
    assert chosen["free"].chain == ("small",) and chosen["free"].expected == {"accuracy": 0.6, "cost_per_query": 0.001}
    assert chosen["paid"].chain == ("small", "big@64") and chosen["paid"].thresholds == (0.5,)  # reaches 0.78
    assert chosen["top"].chain == ("small", "big") and chosen["top"].thresholds == (0.7,)
    assert tier_chains(strategy().select(budget=0.002), tiers) == ["small", "big@64", "big"]
    assert best_single_accuracy(strategy()) == 0.78
    assert tiers["paid"].to_json() == {"target_accuracy": "best_single"} and tiers["top"].to_json() == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"budget": 0.1, "target_accuracy": 0.5}, "tiers['t']: give 'budget' or 'target_accuracy', not both"),
        ({"budget": -1}, "tiers['t']: 'budget' must be a number of USD per query >= 0, got -1"),
        ({"budget": True}, "tiers['t']: 'budget' must be a number of USD per query >= 0, got True"),
        ({"target_accuracy": 1.5}, "tiers['t']: 'target_accuracy' must be a number in [0, 1] or 'best_single'"),
        ({"target_accuracy": "best"}, "tiers['t']: 'target_accuracy' must be a number in [0, 1] or 'best_single'"),
        ({"max_cost": 1}, "tiers['t']: unknown field(s) ['max_cost']"),
        (0.002, "tiers['t']: expected {'budget': usd} or {'target_accuracy': x}, got 0.002"),
    ],
)
def test_a_bad_tier_is_refused_naming_it(value, message):
    with pytest.raises(ConfigurationError) as info:
        Tier.parse("t", value)
    assert str(info.value).startswith(message)


def test_a_tier_out_of_reach_and_a_strategy_without_single_model_figures_are_refused():
    with pytest.raises(ConfigurationError, match=r"tiers\['paid'\]: no cascade reaches accuracy 0.9;"):
        tier_strategies(strategy(), parse_tiers({"paid": {"target_accuracy": 0.9}}))
    with pytest.raises(ConfigurationError, match="target_accuracy 'best_single' needs each model's accuracy"):
        tier_strategies(strategy(info={}), parse_tiers({"paid": {"target_accuracy": "best_single"}}))


def test_the_calls_tier_wins_then_its_tenants_then_the_models_own():
    tiers = parse_tiers({"free": {"budget": 0.002}, "paid": {}})
    tenants = parse_tenants({"acme": {"tier": "paid"}, "globex": {"share_cache_within_tenant": True}}, tiers)
    assert tenants == {"acme": TenantSettings("paid"), "globex": TenantSettings(None, True)}
    assert resolve_tier("free", "acme", tenants, tiers) == "free"
    assert resolve_tier(None, "acme", tenants, tiers) == "paid"
    assert resolve_tier("", "globex", tenants, tiers) == ""
    assert resolve_tier(None, "initech", tenants, tiers) == ""
    assert (shares_cache("globex", tenants), shares_cache("acme", tenants)) == (True, False)
    with pytest.raises(ConfigurationError, match=r"the call names tier 'gold'; this model's tiers are one of"):
        resolve_tier("gold", "acme", tenants, tiers)
    with pytest.raises(ConfigurationError, match=r"tiers are none \(give tiers= to from_strategy\)"):
        resolve_tier("free", "acme", {}, {})
    with pytest.raises(ConfigurationError, match=r"tenants\['acme'\]: 'share_cache_within_tenant' must be true or"):
        parse_tenants({"acme": {"share_cache_within_tenant": "yes"}}, tiers)
    with pytest.raises(ConfigurationError, match=r"tenants\['acme'\]: tier 'gold' is not one of the tiers"):
        parse_tenants({"acme": {"tier": "gold"}}, tiers)


def test_sharing_keys_the_cache_by_tenant_and_never_across_tenants():
    cache = AnswerCache()
    ann = CallContext(Scope("acme", "ann"), fingerprint="c", share_cache=True)
    bob = CallContext(Scope("acme", "bob"), fingerprint="c", share_cache=True)
    bob_alone = CallContext(Scope("acme", "bob"), fingerprint="c")
    carol = CallContext(Scope("globex", "ann"), fingerprint="c", share_cache=True)
    cache.store("Who wrote Middlemarch?", "George Eliot", ann, model="big", score=0.9, cost_usd=Decimal("0.0002"))
    hit = cache.lookup("Who wrote Middlemarch?", bob)
    assert hit is not None and hit.answer == "George Eliot" and hit.saved_usd == Decimal("0.0002")
    assert cache.lookup("Who wrote Middlemarch?", bob_alone) is None  # not opted in: bob's own scope
    assert cache.lookup("Who wrote Middlemarch?", carol) is None  # same user name, another tenant
    assert bob.cache_scope == Scope("acme", "") and bob.scope == Scope("acme", "bob")  # budgets see bob
    assert cache.feedback(hit, False, bob) is not None  # feedback on a shared entry through the call's context


def test_frugal_serve_reads_each_keys_tier_and_checks_it_against_the_tiers_file(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"sk-a": {"tenant": "acme", "user": "ann", "tier": "paid"}, "sk-b": "globex"}))
    entries = read_keys(keys)
    assert (
        parse_request({"messages": [{"role": "user", "content": "hi"}]}, Scope("acme"), "paid").request.tier == "paid"
    )
    tiers = tmp_path / "tiers.json"
    tiers.write_text(json.dumps({"tiers": {"paid": {"budget": 0.01}}, "tenants": {"globex": {"tier": "paid"}}}))
    assert tier_options(tiers, entries) == {
        "tiers": {"paid": {"budget": 0.01}},
        "tenants": {"globex": {"tier": "paid"}},
    }
    with pytest.raises(ConfigurationError, match=r"key sk-a\.\.\.: tier 'paid' is not one of the tiers \[\]"):
        tier_options(None, entries)
    keys.write_text(json.dumps({"sk-a": {"tenant": "acme", "tier": 3}}))
    with pytest.raises(ConfigurationError, match=r"key sk-a\.\.\.: 'tier' must be a tier name, got 3"):
        read_keys(keys)


def test_serve_gives_max_tokens_to_a_model_that_some_tier_calls_uncapped():
    """Tiers may call one model capped (``big@64``) and uncapped (``big``): its stage client gets --max-tokens
    (a budget needs a bound for the uncapped use), and the capped tier's copy is cut to 64 by from_strategy."""
    from shared_scorer.server.gateway import StageOptions

    opts = StageOptions(base_url="http://127.0.0.1:9/v1", api_key="-", max_tokens=1024)
    assert opts.caps(["small", "big@64", "big"]) == {"small": 1024, "big": 1024}
    assert opts.caps(["small", "big@64"]) == {"small": 1024, "big": None}  # one chain: the learned cap only
