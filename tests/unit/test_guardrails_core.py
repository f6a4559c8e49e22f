"""Issue 11, core part: real worst-case reservations, hostile max_tokens, ledger faults, failing stages,
results that travel (JSON, pickle, causes)."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
from decimal import Decimal

import pytest

from shared_scorer import Cascade, CascadeError, ConfigurationError, StageOutput
from shared_scorer.adapters.settings import CascadeSettings
from shared_scorer.budget import Budget, Limit, MemoryLedger
from shared_scorer.context import CallContext, Scope, build_context
from shared_scorer.errors import BudgetExceeded, FrugalError, LedgerError, StageFailure
from shared_scorer.limits import max_output_tokens_of
from shared_scorer.protocols import Reservation
from shared_scorer.tracking import CostTracker

PRICES = {"small": (1, 2), "big": (10, 20)}
ACME = Scope("acme", "ann")


def context(max_output_tokens=None, input_tokens_bound=200):
    return CallContext(ACME, "fp", input_tokens_bound=input_tokens_bound, max_output_tokens=max_output_tokens)


def calls(*texts, tokens_in=100, tokens_out=10):
    return [lambda t=t: StageOutput(t, tokens_in, tokens_out) for t in texts]


class Recorder:
    """A budget hook that grants everything and records each reservation and settlement."""

    def __init__(self) -> None:
        self.reserved: list[tuple[str, Decimal]] = []
        self.settled: list[tuple[str, Decimal]] = []

    def reserve(self, context, model, amount):
        self.reserved.append((model, amount))
        return Reservation(f"r{len(self.reserved)}", amount, context.scope, model)

    def settle(self, reservation, actual):
        self.settled.append((reservation.model, actual))


# ---------------------------------------------------------------- item 3: real worst cases


def test_reservation_uses_each_stages_own_output_limit():
    budget = Recorder()
    cascade = Cascade(
        ["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=budget, output_limits=[100, 2000]
    )
    cascade.run("q", calls("a", "b"), context=context())
    # small: 200 * 1 + 100 * 2 per 1e6; big: 200 * 10 + 2000 * 20 per 1e6
    assert budget.reserved == [("small", Decimal("0.0004")), ("big", Decimal("0.042"))]
    assert budget.settled == [("small", Decimal("0.00012")), ("big", Decimal("0.0012"))]


def test_a_per_call_cap_lowers_the_reservation_but_never_raises_a_stage_above_its_limit():
    budget = Recorder()
    cascade = Cascade(
        ["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=budget, output_limits=[100, 2000]
    )
    cascade.run("q", calls("a", "b"), context=context(max_output_tokens=500))
    # small: min(500, 100) = 100; big: min(500, 2000) = 500
    assert budget.reserved == [("small", Decimal("0.0004")), ("big", Decimal("0.012"))]
    assert cascade.stage_max_tokens(0, context(500)) == 100
    assert cascade.stage_max_tokens(1, context(500)) == 500
    assert cascade.stage_max_tokens(1, context()) == 2000


def test_no_4096_guess_a_budgeted_call_with_no_bound_is_an_error_before_any_provider_call():
    budget = Recorder()
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, budget=budget)
    called = []

    def stage() -> StageOutput:
        called.append(1)
        return StageOutput("a", 1, 1)

    with pytest.raises(ConfigurationError, match=r"stage 0 \(small\).*max_output_tokens=\{'small': N\}"):
        cascade.run("q", [stage], context=context())
    assert called == [] and budget.reserved == []


def test_a_budget_with_a_stage_of_unknown_limit_is_an_error_at_construction():
    with pytest.raises(ConfigurationError, match=r"stage 1 \(big\)") as info:
        Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=Recorder(), output_limits=[100, None])
    assert "max_tokens" in str(info.value)
    # without a budget an unknown limit is fine
    Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, output_limits=[100, None])


def test_small_budgets_are_usable_with_a_known_limit():
    # issue 11 item 3: a fresh user with $0.005 was refused a call that costs $0.001 (4,096 tokens reserved)
    budget = Budget(MemoryLedger(), [Limit("user", "0.005", period="day")])
    prices = {"big": (2.5, 10)}
    cascade = Cascade(["big"], [], lambda q, a: 1.0, prices=prices, budget=budget, output_limits=[300])
    result = cascade.run("q", calls("a", tokens_in=200, tokens_out=50), context=context(input_tokens_bound=400))
    assert result.output is not None and result.output.text == "a"
    assert result.cost_usd == Decimal("0.001")


class Stage:
    def __init__(self, name, **attrs) -> None:
        self.name = name
        for key, value in attrs.items():
            setattr(self, key, value)


class StageSettings(CascadeSettings):
    """The settings model both adapters are built on, over plain :class:`Stage` objects."""

    _stage_type, _stage_kind = Stage, "a Stage"
    _stage_name = staticmethod(lambda stage: stage.name)


def settings(stages, budget=None, **extra):
    return dict(
        stages=stages,
        thresholds=[0.5] * (len(stages) - 1),
        scorer=lambda q, a: 0.1,
        prices={s.name: (1, 2) for s in stages},
        return_policy="last",
        cost_tracker=CostTracker(),
        answer_cache=None,
        budget=budget,
        on_budget="stop",
        **extra,
    )


def build(config):
    return StageSettings(**config).cascade


def test_settings_cascade_finds_each_stages_limit_in_order():
    stages = [
        Stage("given", max_tokens=10),  # the user's mapping wins over the stage's own field
        Stage("field", max_tokens=20),
        Stage("completion", max_completion_tokens=30),
        Stage("output", max_output_tokens=40),
        Stage("profiled", profile={"max_output_tokens": 50}),
        Stage("unknown"),
    ]
    cascade = build(settings(stages, max_output_tokens={"given": 5}))
    assert cascade.output_limits == [5, 20, 30, 40, 50, None]


def test_settings_cascade_with_a_budget_names_the_stage_without_a_limit():
    stages = [Stage("cheap", max_tokens=100), Stage("dear")]
    with pytest.raises(ConfigurationError) as info:
        build(settings(stages, budget=Recorder()))
    message = str(info.value)
    assert "stage 1 (dear)" in message
    assert "max_output_tokens={'dear': N}" in message and "max_tokens" in message
    cascade = build(settings(stages, budget=Recorder(), max_output_tokens={"dear": 800}))
    assert cascade.output_limits == [100, 800]


def test_settings_cascade_counts_the_adapters_own_max_tokens_as_every_stages_cap():
    stages = [Stage("cheap", max_tokens=100), Stage("dear")]
    cascade = build(settings(stages, budget=Recorder(), max_tokens=300))
    assert cascade.output_limits == [100, 300]
    with pytest.raises(ConfigurationError, match="max_tokens"):
        build(settings(stages, max_tokens=-1))


def test_max_output_tokens_of_sees_every_kind_of_limit():
    assert max_output_tokens_of([Stage("a", max_tokens=10), Stage("b", profile={"max_output_tokens": 70})]) == 70
    assert max_output_tokens_of([Stage("a", max_tokens=10), Stage("b")]) is None


# ---------------------------------------------------------------- item 4: hostile max_tokens


@pytest.mark.parametrize("bad", [-1_000_000_000, -5, 0, True, 2.5, "abc", "100"])
def test_a_hostile_per_call_max_tokens_is_a_configuration_error_naming_it(bad):
    with pytest.raises(ConfigurationError, match="max_output_tokens") as info:
        CallContext(ACME, max_output_tokens=bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ConfigurationError, match=repr(bad).replace("(", r"\(")):
        build_context([("user", "hi")], scope=ACME, max_output_tokens=bad)


@pytest.mark.parametrize("bad", [-5, 0, True, 2.5, "abc"])
def test_a_hostile_output_limit_is_a_configuration_error(bad):
    with pytest.raises(ConfigurationError, match=r"output_limits\[0\]"):
        Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, output_limits=[bad])
    with pytest.raises(ConfigurationError, match="small"):
        # the core's own check, behind pydantic's typing (which already refuses 2.5 and "abc")
        StageSettings.model_construct(**settings([Stage("small")], max_output_tokens={"small": bad}))._build_cascade()


def test_a_negative_input_bound_is_rejected():
    with pytest.raises(ConfigurationError, match="input_tokens_bound"):
        CallContext(ACME, input_tokens_bound=-100)


@pytest.mark.parametrize("bad", [Decimal("-0.01"), Decimal("NaN"), Decimal("-Infinity")])
def test_budget_refuses_to_hold_a_negative_or_non_finite_amount(bad):
    budget = Budget(MemoryLedger(), [Limit("tenant", "0.02", period="day")])
    with pytest.raises(ConfigurationError, match="amount"):
        budget.reserve(context(), "big", bad)
    assert budget.status(ACME)[0].held_usd == 0
    held = budget.reserve(context(), "big", Decimal("0.01"))
    with pytest.raises(ConfigurationError, match="actual"):
        budget.settle(held, bad)


def test_ten_hostile_requests_cannot_overspend():
    # issue 11 item 4: ten requests with max_tokens=-1e9 spent $0.234 against $0.02
    budget = Budget(MemoryLedger(), [Limit("tenant", "0.02", period="day")])
    cascade = Cascade(["big"], [], lambda q, a: 1.0, prices={"big": (10, 30)}, budget=budget, output_limits=[1000])
    for _ in range(10):
        with pytest.raises(ConfigurationError):
            cascade.run("q", calls("a", tokens_out=800), context=context(max_output_tokens=-1_000_000_000))
    assert budget.status(ACME)[0].spent_usd == 0
    assert cascade.tracker.summary()["calls"] == 0


# ---------------------------------------------------------------- item 5: ledger faults


class FlakyBudget(Recorder):
    def __init__(self, *, reserve_error=None, settle_error=None) -> None:
        super().__init__()
        self.reserve_error = reserve_error
        self.settle_error = settle_error

    def reserve(self, context, model, amount):
        if self.reserve_error is not None:
            raise self.reserve_error
        return super().reserve(context, model, amount)

    def settle(self, reservation, actual):
        if self.settle_error is not None:
            raise self.settle_error
        super().settle(reservation, actual)


class AsyncFlakyBudget(FlakyBudget):
    async def areserve(self, context, model, amount):
        await asyncio.sleep(0)
        return self.reserve(context, model, amount)

    async def asettle(self, reservation, actual):
        await asyncio.sleep(0)
        self.settle(reservation, actual)


@pytest.mark.parametrize("error", [LedgerError("redis at 127.0.0.1:1 is down"), ConnectionError("reset")])
def test_a_ledger_failing_on_settle_keeps_the_paid_answer(error, caplog):
    budget = FlakyBudget(settle_error=error)
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, budget=budget, output_limits=[100])
    with caplog.at_level(logging.ERROR, logger="shared_scorer.cascade"):
        result = cascade.run("q", calls("paid"), context=context())
    assert result.output is not None and result.output.text == "paid"
    attempt = result.attempts[0]
    assert attempt.status == "accepted" and attempt.cost_usd == Decimal("0.00012")
    assert attempt.settle_error == f"{type(error).__name__}: {error}"
    assert result.trail()["stages"][0]["settle_error"] == attempt.settle_error
    summary = cascade.tracker.summary(decimals=True)
    assert summary["total_cost_usd"] == Decimal("0.00012") and summary["settle_errors"] == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "0.00012" in record.getMessage() and "r1" in record.getMessage() and "small" in record.getMessage()


def test_a_ledger_failing_on_settle_on_the_event_loop_keeps_the_answer():
    budget = AsyncFlakyBudget(settle_error=LedgerError("down"))
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, budget=budget, output_limits=[100])

    async def stage() -> StageOutput:
        return StageOutput("paid", 100, 10)

    result = asyncio.run(cascade.arun("q", [stage], context=context()))
    assert result.output is not None and result.output.text == "paid"
    assert result.attempts[0].settle_error == "LedgerError: down"


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_ledger_failing_on_reserve_fails_closed_without_a_provider_call(flavour):
    budget = AsyncFlakyBudget(reserve_error=ConnectionError("redis down"))
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, budget=budget, output_limits=[100])
    called = []

    def stage() -> StageOutput:
        called.append(1)
        return StageOutput("a", 1, 1)

    async def astage() -> StageOutput:
        return stage()

    with pytest.raises(LedgerError, match="stage 0 \\(small\\)") as info:
        if flavour == "sync":
            cascade.run("q", [stage], context=context())
        else:
            asyncio.run(cascade.arun("q", [astage], context=context()))
    assert called == []
    assert isinstance(info.value.__cause__, ConnectionError)
    assert cascade.tracker.summary()["failed_calls"] == 1


def test_a_ledger_failing_on_a_later_reserve_still_counts_the_earlier_spend():
    class SecondFails(Recorder):
        def reserve(self, context, model, amount):
            if model == "big":
                raise LedgerError("ledger gone")
            return super().reserve(context, model, amount)

    budget = SecondFails()
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES, budget=budget, output_limits=[100, 100])
    with pytest.raises(LedgerError) as info:
        cascade.run("q", calls("a", "b"), context=context())
    assert info.value.result.attempts[0].cost_usd == Decimal("0.00012")
    assert budget.settled == [("small", Decimal("0.00012"))]
    assert cascade.tracker.summary(decimals=True)["total_cost_usd"] == Decimal("0.00012")


# ---------------------------------------------------------------- item 11: stages that keep failing


def test_a_stage_failing_every_call_warns_once_per_window_and_is_counted(caplog):
    cascade = Cascade(["typo-model", "big"], [0.5], lambda q, a: 0.9, prices={"typo-model": (1, 2), "big": (10, 20)})
    now = [1000.0]
    cascade.failure_warnings.clock = lambda: now[0]

    def not_found() -> StageOutput:
        raise LookupError("404 model 'typo-model' not found")

    stages = [not_found, lambda: StageOutput("b", 100, 10)]
    with caplog.at_level(logging.WARNING, logger="shared_scorer.cascade"):
        for _ in range(5):
            cascade.run("q", stages)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "stage 0 (typo-model)" in warnings[0] and "404 model 'typo-model' not found" in warnings[0]
        now[0] += 61
        cascade.run("q", stages)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "failed 5 time(s) in the last 61 s" in warnings[1]
    summary = cascade.tracker.summary()
    assert summary["errors_by_stage"] == {0: 6}
    assert summary["errors_by_model"] == {"typo-model": 6}
    assert summary["invalid_by_stage"] == {}
    assert summary["failed_calls"] == 0


def test_invalid_answers_are_counted_per_stage():
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.9, prices=PRICES)
    cascade.run("q", [lambda: StageOutput("", 1, 1), lambda: StageOutput("b", 1, 1)])
    summary = cascade.tracker.summary()
    assert summary["invalid_by_stage"] == {0: 1} and summary["errors_by_stage"] == {}


# ---------------------------------------------------------------- item 13: results that travel


def test_trail_and_summary_survive_json_with_money_as_strings():
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES)
    result = cascade.run("q", calls("a", "b"))
    trail = json.loads(json.dumps(result.trail()))
    assert trail["cost_usd"] == "0.00132"
    assert [s["cost_usd"] for s in trail["stages"]] == ["0.00012", "0.0012"]
    summary = json.loads(json.dumps(cascade.tracker.summary()))
    assert summary["total_cost_usd"] == "0.00132"
    assert summary["by_model"]["big"]["cost_usd"] == "0.0012"
    assert summary["by_stage"]["0"]["cost_usd"] == "0.00012"
    assert summary["estimated_savings_usd"] == "-0.00012"  # the last stage answered: the escalation cost more
    exact = cascade.tracker.summary(decimals=True)
    assert exact["total_cost_usd"] == Decimal("0.00132")
    assert exact["by_model"]["big"]["cost_usd"] == Decimal("0.0012")


def test_tiny_amounts_are_written_without_exponents():
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices={"small": ("0.01", "0.01")})
    result = cascade.run("q", calls("a", tokens_in=1, tokens_out=0))
    assert result.cost_usd == Decimal("1E-8")
    assert result.trail()["cost_usd"] == "0.00000001"


def test_cache_hit_money_in_the_trail_is_a_string():
    from shared_scorer.protocols import CacheHit

    class Hit:
        def lookup(self, query, context):
            return CacheHit("e1", "cached", 1.0, "small", Decimal("0.00012"))

        def store(self, *args, **kwargs):
            raise AssertionError("not stored")

    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, answer_cache=Hit())
    trail = cascade.run("q", [None]).trail()
    assert trail["cache_hit"] == {"entry_id": "e1", "similarity": 1.0, "saved_usd": "0.00012"}
    assert json.loads(json.dumps(cascade.tracker.summary()))["cache_saved_usd"] == "0.00012"


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def test_cascade_error_keeps_the_stage_exceptions_and_survives_pickle():
    first, last = ConnectionError("refused"), Unpicklable("socket object")
    cascade = Cascade(["small", "big"], [0.5], lambda q, a: 0.1, prices=PRICES)

    def raiser(exc):
        def call():
            raise exc

        return call

    with pytest.raises(CascadeError) as info:
        cascade.run("q", [raiser(first), raiser(last)])
    error = info.value
    assert error.__cause__ is last
    assert error.exceptions == (first, last)
    assert [f.exception for f in error.failures] == [first, last]
    assert error.result.trail()["stages"][1]["error"] == "Unpicklable: socket object"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CascadeError and str(copy) == str(error)
    assert [(f.stage, f.model, f.kind, f.message) for f in copy.failures] == [
        (0, "small", "error", "ConnectionError: refused"),
        (1, "big", "error", "Unpicklable: socket object"),
    ]
    assert isinstance(copy.failures[0].exception, ConnectionError) and copy.failures[1].exception is None
    assert copy.result.attempts[1].error == "Unpicklable: socket object"


def test_budget_exceeded_and_other_errors_survive_pickle():
    error = BudgetExceeded("tenant 'acme' daily limit $0.10", "tenant 'acme' daily limit $0.10: spent ...")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.limit, str(copy)) == (BudgetExceeded, error.limit, str(error))
    for cls in (LedgerError, ConfigurationError, FrugalError):
        again = pickle.loads(pickle.dumps(cls("what and where")))
        assert type(again) is cls and str(again) == "what and where"
    failure = pickle.loads(pickle.dumps(StageFailure(0, "m", "error", "boom", ValueError("x"))))
    assert failure == StageFailure(0, "m", "error", "boom") and isinstance(failure.exception, ValueError)


def test_budget_errors_live_in_the_one_tree_and_old_imports_still_work():
    import shared_scorer
    import shared_scorer.errors as errors
    from shared_scorer.errors import BudgetExceeded as FromHooks

    assert FromHooks is BudgetExceeded and issubclass(BudgetExceeded, FrugalError)
    assert shared_scorer.BudgetExceeded is BudgetExceeded and shared_scorer.LedgerError is LedgerError
    assert "BudgetExceeded" in errors.__doc__ and "LedgerError" in errors.__doc__


def test_negative_or_malformed_token_counts_never_make_a_negative_cost():
    budget = Recorder()
    cascade = Cascade(["small"], [], lambda q, a: 1.0, prices=PRICES, budget=budget, output_limits=[100])
    result = cascade.run("q", [lambda: StageOutput("a", -1_000_000, 10)], context=context())
    attempt = result.attempts[0]
    assert (attempt.input_tokens, attempt.output_tokens, attempt.usage_reported) == (0, 10, False)
    assert result.cost_usd == Decimal("0.00002") and budget.settled == [("small", Decimal("0.00002"))]
    result = cascade.run("q", [lambda: StageOutput("a", 5, True)], context=context())
    assert (result.attempts[0].output_tokens, result.cost_usd) == (0, Decimal("0.000005"))
