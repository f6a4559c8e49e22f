"""``CascadeSettings``: the one settings model both framework adapters are built on.

``FrugalChatModel(CascadeSettings, BaseChatModel)`` and ``FrugalLLM(CascadeSettings, FunctionCallingLLM)``
declare none of these fields themselves: each field, its default, its description and whether it is
serialised are written once, here, and the cascade is built from them in one place. An adapter only says
how to recognise and name its framework's stage models (the ``_stage_type``, ``_stage_kind`` and
``_stage_name`` hooks) and translates calls.

Framework-free: pydantic only. A minimal subclass (as the tests use):

>>> class Names(CascadeSettings):
...     _stage_type, _stage_kind = str, "a str"
...     _stage_name = staticmethod(str)
>>> prices = {"small": (1, 2), "big": (3, 4)}
>>> settings = Names(stages=["small", "big"], scorer=lambda q, a: 1.0, thresholds=[0.5], prices=prices)
>>> settings.cascade.models, settings.model_dump()["model_name"]
(['small', 'big'], 'frugal-cascade')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from shared_scorer.adapters.assemble import strategy_settings
from shared_scorer.adapters.tiers import (
    TenantSettings,
    parse_tenants,
    parse_tiers,
    resolve_tier,
    shares_cache,
    tier_strategies,
)
from shared_scorer.cascade import Cascade
from shared_scorer.context import CallContext, Scope, build_context, check_max_tokens
from shared_scorer.errors import ConfigurationError
from shared_scorer.limits import output_limit_of
from shared_scorer.strategy import Strategy
from shared_scorer.tracking import CostTracker

_Settings = TypeVar("_Settings", bound="CascadeSettings")

FORWARDED = ("temperature", "max_tokens")
"""The settings sent to every stage call when set (a call's own keyword wins)."""


class CascadeSettings(BaseModel):
    """The settings of a cascade behind one framework model, validated once; the cascade built from them.

    A subclass provides ``_stage_type`` (its framework's model class: every stage must be one),
    ``_stage_kind`` (what a stage must be, as the error names it) and ``_stage_name`` (the model name a
    stage is priced and reported under). With a framework base class, list ``CascadeSettings`` first
    and set ``model_config = CascadeSettings.model_config`` (pydantic merges the bases' configs in order,
    so the framework's ``extra="ignore"`` would otherwise win).
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, populate_by_name=True, extra="forbid", protected_namespaces=()
    )

    stages: list[Any] = Field(
        description="The stage models, cheapest first: LangChain chat models (``BaseChatModel``) for "
        "``FrugalChatModel``, LlamaIndex LLMs for ``FrugalLLM``."
    )
    scorer: Any = Field(
        description="A ``shared_scorer.Scorer`` (e.g. ``DistilBertScorer``) or a function "
        "``(query, answer) -> [0, 1]``."
    )
    thresholds: list[float] = Field(
        default_factory=list, description="One acceptance threshold in [0, 1] per stage but the last."
    )
    gates: list[float | None] | None = Field(
        default=None,
        description="Router gates, one per stage (``None``: no gate): a gated stage is skipped, at no cost, when "
        "the scorer's router (``scorer.route_stages(query)``, the strategy scorer's query prior) predicts its "
        "answer is correct with a probability below the gate. Set by ``from_strategy`` for a router-started chain.",
    )
    prices: dict[str, Any] | None = Field(
        default=None,
        description="Price overrides by stage model name: ``(input, output)`` USD per million tokens or a "
        "``Price``. Models not listed are priced from ``genai-prices``; an unknown one is an error at construction.",
    )
    return_policy: Literal["last", "best"] = Field(
        default="last",
        description="``'last'``: when no earlier stage is accepted, return the last stage's answer. ``'best'``: "
        "return the best-scored answer seen (the last stage is then scored and buffered when streaming).",
    )
    tool_call_policy: Any = Field(
        default="validate",
        description="How a reply with tool calls (an agent's tool-call step) is judged. ``'validate'`` (default): "
        "accepted when every call names an offered tool and its arguments fit that tool's JSON schema, with no "
        "score (the trail's score is None); escalates otherwise. ``'score'``: rated by ``scorer`` against the "
        "stage threshold. A ``Scorer`` or ``(query, answer) -> [0, 1]`` (e.g. fitted on tool-call outcomes): "
        "rated by it. Invalid calls escalate under every policy; final answers are always rated by ``scorer``.",
    )
    cost_tracker: CostTracker = Field(
        default_factory=CostTracker,
        exclude=True,
        description="Where every call's spend is recorded; pass one to share it between models. Created if omitted.",
    )
    model_name: str = Field(
        default="frugal-cascade",
        alias="model",
        description="The name this cascade reports for tracing; each answer names the stage model that "
        "actually answered.",
    )
    temperature: float | None = Field(
        default=None, description="Sent to every stage call when set (else each stage's own setting applies)."
    )
    max_tokens: int | None = Field(
        default=None,
        description="Sent to every stage call when set (else each stage's own setting applies); also caps "
        "every stage's output limit.",
    )
    tenant: str | None = Field(
        default=None,
        description="The tenant calls belong to (cache entries and budgets are scoped by it); a call may name "
        "its own (LangChain: ``config={'metadata': {'tenant': ...}}``; LlamaIndex: ``tenant=``).",
    )
    user: str | None = Field(
        default=None,
        description="The user calls belong to; a call may name its own (LangChain: "
        "``config={'metadata': {'user': ...}}``; LlamaIndex: ``user=``).",
    )
    tenant_profiles: dict[str, str | dict[str, Any]] | None = Field(
        default=None,
        description="The caller profile the scorer reads with each tenant's calls (a text or a mapping, "
        "rendered by ``render_profile``), by tenant name; a call may give its own (LangChain: "
        "``config={'metadata': {'frugal_profile': ...}}``; LlamaIndex: ``frugal_profile=``), which wins.",
    )
    answer_cache: Any = Field(
        default=None,
        exclude=True,
        description="An ``AnswerCache`` consulted before the first stage (accepted answers are stored in it).",
    )
    budget: Any = Field(
        default=None,
        exclude=True,
        description="A ``Budget``: each stage's worst-case cost is reserved before the stage is called.",
    )
    on_budget: Literal["stop", "raise"] = Field(
        default="stop",
        description="When a stage cannot be afforded: ``'stop'`` returns the best answer already in hand "
        "(raising ``BudgetExceeded`` if there is none), ``'raise'`` raises ``BudgetExceeded`` naming the limit.",
    )
    strategy_id: str = Field(
        default="",
        description="Identifies the fitted strategy (part of every cache fingerprint, so a new strategy "
        "starts afresh).",
    )
    max_output_tokens: dict[str, int] | None = Field(
        default=None,
        description="The most output tokens each stage may write, by stage model name (bounds budget "
        "reservations; needed for a stage whose client sets no ``max_tokens``). Each stage call is sent at most this.",
    )
    request_logprobs: bool = Field(
        default=True,
        description="Ask each stage whose client supports it (ChatOpenAI, LlamaIndex OpenAI/OpenAILike) for the "
        "answer's token log-probabilities, called as a copy with ``logprobs=True`` unless the stage sets "
        "``logprobs`` itself; the scorer sees their sum as ``ScoreRequest.logprob`` (None where the provider "
        "gives none). Turn off for a server that rejects ``logprobs``.",
    )
    tiers: dict[str, Any] | None = Field(
        default=None,
        exclude=True,
        description="The model each caller tier is answered by, by tier name: models of this same class, "
        "usually built by ``from_strategy(..., tiers={'free': {'budget': 0.002}, 'paid': {'target_accuracy': "
        "'best_single'}})`` from one fit's frontier. A call names its tier (LangChain: ``config={'metadata': "
        "{'tier': ...}}``; LlamaIndex: ``tier=``), else its tenant's tier (``tenants``) applies, else this "
        "model's own.",
    )
    tenants: dict[str, Any] | None = Field(
        default=None,
        description="Per-tenant settings: ``{'acme': {'tier': 'paid', 'share_cache_within_tenant': True}}``. "
        "``tier``: the tier the tenant's calls run in unless a call names its own; "
        "``share_cache_within_tenant``: the tenant's users share cached answers (budgets stay per user).",
    )

    _stage_type: ClassVar[type] = object
    """The framework's model class: every stage must be an instance of it."""
    _stage_kind: ClassVar[str] = "a stage model"
    """What a stage must be, as an error message names it."""
    _cascade: Cascade = PrivateAttr()
    _tenant_settings: dict[str, TenantSettings] = PrivateAttr(default_factory=dict)

    @staticmethod
    def _stage_name(stage: Any, /) -> str:
        """The model name ``stage`` is priced and reported under (a subclass says)."""
        raise NotImplementedError

    def __init__(self, **data: Any) -> None:
        _reject_unknown_arguments(type(self), data)
        super().__init__(**data)
        self._cascade = self._build_cascade()
        self._tenant_settings = self._check_tiers()

    @property
    def cascade(self) -> Cascade:
        """The framework-free cascade this model delegates every decision to."""
        return self._cascade

    @classmethod
    def from_strategy(
        cls: type[_Settings], path: str | Path | Strategy, stages: Mapping[str, Any], **options: Any
    ) -> _Settings:
        """Build the cascade a ``frugal fit`` strategy describes, over ``stages[name]`` for each model.

        Both adapters make the same decisions from the same strategy. ``max_cost_per_query=`` or
        ``target_accuracy=`` picks another point of the saved frontier without refitting; ``scorer=`` and
        ``prices=`` override the saved ones; other keyword arguments (``budget=``, ``answer_cache=``,
        ``tenant=`` ...) go to the model. Example:

        .. code-block:: python

            llm = FrugalChatModel.from_strategy(
                "out/strategy/strategy.json",
                stages={"gpt-5-mini": ChatOpenAI(model="gpt-5-mini"), "gpt-5": ChatOpenAI(model="gpt-5")},
            )
            llm = FrugalLLM.from_strategy("out/strategy/strategy.json", stages={"gpt-5-mini": OpenAILike(...)})

        ``tiers=`` (``{name: {"budget": usd} | {"target_accuracy": x | "best_single"}}``) builds one model per
        tier from the same fit, at that tier's frontier point, sharing this model's scorer, cost tracker,
        budget and answer cache (see :mod:`shared_scorer.adapters.tiers`); ``stages`` must then hold every
        model the tiers' chains name.
        """
        keys = ("scorer", "max_cost_per_query", "target_accuracy", "prices")
        chosen = {key: options.pop(key) for key in keys if key in options}
        objectives = parse_tiers(options.pop("tiers", None))
        settings = strategy_settings(path, stages, name_of=cls._stage_name, **chosen)
        if not objectives:
            return cls(**settings, **options)
        strategy = path if isinstance(path, Strategy) else Strategy.load(path)
        options.setdefault("cost_tracker", CostTracker())
        shared = {**options, "tenants": None}
        chosen = {**chosen, "scorer": settings["scorer"].inner, "max_cost_per_query": None, "target_accuracy": None}
        tiers = {
            name: cls(**strategy_settings(point, stages, name_of=cls._stage_name, **chosen), **shared)
            for name, point in tier_strategies(strategy, objectives).items()
        }
        return cls(**settings, **options, tiers=tiers)

    def _build_cascade(self) -> Cascade:
        """The cascade this model delegates to, checked at construction.

        Each stage's output limit is the smaller of the one :func:`output_limit_of` finds (``max_output_tokens``
        first) and ``max_tokens``; with a budget, a stage with neither is an error here.
        """
        if not self.stages:
            raise ConfigurationError(f"{type(self).__name__} needs at least one stage")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, self._stage_type):
                raise ConfigurationError(f"stage {i} must be {self._stage_kind}, got {type(stage).__name__}")
        names = [self._stage_name(stage) for stage in self.stages]
        cap = check_max_tokens(self.max_tokens, f"{type(self).__name__}.max_tokens")
        limits = []
        for stage, name in zip(self.stages, names, strict=True):
            known = [x for x in (output_limit_of(stage, name, self.max_output_tokens), cap) if x is not None]
            limits.append(min(known) if known else None)
        return Cascade(
            names,
            self.thresholds,
            self.scorer,
            prices=self.prices,
            return_policy=self.return_policy,
            tracker=self.cost_tracker,
            answer_cache=self.answer_cache,
            budget=self.budget,
            on_budget=self.on_budget,
            output_limits=limits,
            step_policy=self.tool_call_policy,
            gates=self.gates,
            router=getattr(self.scorer, "route_stages", None) if self.gates else None,
        )

    # ------------------------------------------------------------------ what every call does

    def _forwarded(self, call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The settings sent to every stage call (``temperature``, ``max_tokens``) that are set here and
        not given by the call itself."""
        return {
            name: getattr(self, name)
            for name in FORWARDED
            if getattr(self, name) is not None and name not in call_kwargs
        }

    def _call_context(
        self,
        turns: Sequence[tuple[str, str]],
        *,
        tenant: object = None,
        user: object = None,
        tools: Any = None,
        max_output_tokens: Any = None,
        cacheable: bool = True,
        tier: object = None,
        profile: object = None,
    ) -> CallContext:
        """The call's context: its scope (the call's ``tenant``/``user`` win over the fields, ``"default"``
        when neither is set), its tier (the call's, else its tenant's) and that tier's strategy, whether the
        tenant shares its cache, its tools and output limit, and the caller's profile (the call's ``profile``,
        else its tenant's in ``tenant_profiles``) (see :func:`build_context`)."""
        scope = Scope(tenant=str(tenant or self.tenant or "default"), user=str(user or self.user or "default"))
        tier_name = resolve_tier(tier, scope.tenant, self._tenant_settings, list(self.tiers or {}))
        return build_context(
            turns,
            scope=scope,
            tools=tools,
            strategy=(self.tiers or {}).get(tier_name, self).strategy_id,
            max_output_tokens=max_output_tokens,
            cacheable=cacheable,
            tier=tier_name,
            share_cache=shares_cache(scope.tenant, self._tenant_settings),
            profile=profile if profile is not None else (self.tenant_profiles or {}).get(scope.tenant),
        )

    def _check_tiers(self) -> dict[str, TenantSettings]:
        """The tenants' settings, checked against the tiers (each tier a model of this class, with no tiers
        of its own)."""
        for name, model in (self.tiers or {}).items():
            if not isinstance(name, str) or not name or type(model) is not type(self) or model.tiers:
                raise ConfigurationError(
                    f"tiers[{name!r}] must be a {type(self).__name__} without tiers of its own, got "
                    f"{type(model).__name__} (build tiers with from_strategy(..., tiers={{name: objective}}))"
                )
        return parse_tenants(self.tenants, list(self.tiers or {}))

    def _tier_model(self, context: CallContext) -> Any:
        """The model a call in ``context`` is answered by: its tier's, or this one."""
        return (self.tiers or {}).get(context.tier, self)

    def _cascade_for(self, context: CallContext) -> Cascade:
        """The cascade a call in ``context`` runs: its tier's, or this model's."""
        return self._tier_model(context)._cascade  # type: ignore[no-any-return]

    def _stage_limits(self, context: CallContext) -> list[int | None]:
        """The output tokens each stage is sent at most on this call (``None``: no limit to send)."""
        return [self._cascade.stage_max_tokens(i, context) for i in range(len(self._cascade.models))]


def _reject_unknown_arguments(cls: type[BaseModel], arguments: Mapping[str, Any]) -> None:
    """A :class:`ConfigurationError` naming each argument ``cls`` has no field (or alias) for, with the
    nearest field name: a misspelt option must not be ignored."""
    fields = cls.model_fields
    known = set(fields) | {f.alias for f in fields.values() if isinstance(f.alias, str)}
    unknown = [name for name in arguments if name not in known]
    if not unknown:
        return
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigurationError(f"{cls.__name__}: unknown argument{plural} {', '.join(parts)}")


__all__ = ["FORWARDED", "CascadeSettings"]
