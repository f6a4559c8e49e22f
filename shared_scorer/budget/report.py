"""``frugal report``: spend by model, stage, tenant, user and day from a ledger's records.

One read of the ledger's records (every stage call of every process that wrote to it), aggregated here:
spend and calls per model, stage, tenant, user and day; escalation rates; cache hits and the money they
saved; budget refusals; and the estimated saving against always calling the last stage. Printed as a
table; :func:`write_png` draws the same figures as a chart (matplotlib, imported only then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared_scorer.budget.ledger import Ledger, SpendRecord
from shared_scorer.budget.urls import open_ledger
from shared_scorer.errors import ConfigurationError


@dataclass
class Spend:
    """Calls and USD of one group (a model, a stage, a tenant, ...)."""

    calls: int = 0
    cost_usd: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, row: SpendRecord) -> None:
        self.calls += 1
        self.cost_usd += row.cost_usd
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens


@dataclass
class Report:
    """The figures ``frugal report`` prints (money as exact ``Decimal``).

    >>> from shared_scorer.budget import SpendRecord
    >>> row = SpendRecord(0.0, "1970-01-01", "q1", "acme", "ann", "small", 0, "accepted", Decimal("0.25"),
    ...                   answered=True, all_last_usd=Decimal("1.25"))
    >>> report = build_report([row])
    >>> report.total_cost_usd, report.estimated_saving_usd
    (Decimal('0.25'), Decimal('1.00'))
    """

    requests: int = 0
    answered: int = 0
    failed: int = 0
    stage_calls: int = 0
    total_cost_usd: Decimal = Decimal(0)
    by_model: dict[str, Spend] = field(default_factory=dict)
    by_stage: dict[int, Spend] = field(default_factory=dict)
    by_tenant: dict[str, Spend] = field(default_factory=dict)
    by_user: dict[str, Spend] = field(default_factory=dict)
    by_day: dict[str, Spend] = field(default_factory=dict)
    answered_by_stage: dict[int, int] = field(default_factory=dict)
    escalated_requests: int = 0
    escalated_by_stage: dict[int, int] = field(default_factory=dict)
    budget_refusals: int = 0
    cache_hits: int = 0
    cache_saved_usd: Decimal = Decimal(0)
    all_last_estimate_usd: Decimal = Decimal(0)

    @property
    def escalation_rate(self) -> float:
        """Share of requests answered by a stage that went past at least one earlier stage."""
        called = self.requests - self.cache_hits
        return self.escalated_requests / called if called else 0.0

    def stage_escalation_rate(self, stage: int) -> float:
        """Share of the calls of ``stage`` after which the query moved on."""
        calls = self.by_stage[stage].calls if stage in self.by_stage else 0
        return self.escalated_by_stage.get(stage, 0) / calls if calls else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0

    @property
    def estimated_saving_usd(self) -> Decimal:
        """Estimated cost had every answered request gone to the last stage alone, less what was spent."""
        return self.all_last_estimate_usd - self.total_cost_usd if self.answered else Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly figures (money as decimal strings)."""

        def spend(groups: dict[Any, Spend]) -> dict[str, Any]:
            return {str(k): {"calls": v.calls, "cost_usd": str(v.cost_usd)} for k, v in sorted(groups.items())}

        return {
            "requests": self.requests,
            "answered": self.answered,
            "failed": self.failed,
            "stage_calls": self.stage_calls,
            "total_cost_usd": str(self.total_cost_usd),
            "by_model": spend(self.by_model),
            "by_stage": spend(self.by_stage),
            "by_tenant": spend(self.by_tenant),
            "by_user": spend(self.by_user),
            "by_day": spend(self.by_day),
            "answered_by_stage": {str(k): v for k, v in sorted(self.answered_by_stage.items())},
            "escalation_rate": round(self.escalation_rate, 4),
            "stage_escalation_rate": {str(s): round(self.stage_escalation_rate(s), 4) for s in sorted(self.by_stage)},
            "budget_refusals": self.budget_refusals,
            "cache_hits": self.cache_hits,
            "cache_hit_rate": round(self.cache_hit_rate, 4),
            "cache_saved_usd": str(self.cache_saved_usd),
            "estimated_cost_if_last_stage_only_usd": str(self.all_last_estimate_usd),
            "estimated_saving_usd": str(self.estimated_saving_usd),
        }


def build_report(records: Iterable[SpendRecord]) -> Report:
    """Aggregate ledger records into a :class:`Report`."""
    report = Report()
    requests: dict[str, list[SpendRecord]] = {}
    for row in records:
        requests.setdefault(row.request, []).append(row)
        if row.status == "over_budget":
            report.budget_refusals += 1
            continue
        if row.cache_hit:
            report.cache_hits += 1
            report.cache_saved_usd += row.saved_usd
            continue
        report.stage_calls += 1
        report.total_cost_usd += row.cost_usd
        for groups, key in (
            (report.by_model, row.model),
            (report.by_tenant, row.tenant),
            (report.by_user, f"{row.tenant}/{row.user}"),
            (report.by_day, row.day),
        ):
            groups.setdefault(key, Spend()).add(row)
        report.by_stage.setdefault(row.stage, Spend()).add(row)
        if row.escalated:
            report.escalated_by_stage[row.stage] = report.escalated_by_stage.get(row.stage, 0) + 1
    report.requests = len(requests)
    for rows in requests.values():
        answer = next((r for r in rows if r.answered), None)
        if answer is not None:
            report.answered += 1
            report.all_last_estimate_usd += answer.all_last_usd
            if not answer.cache_hit:
                report.answered_by_stage[answer.stage] = report.answered_by_stage.get(answer.stage, 0) + 1
        elif any(r.failed for r in rows):
            report.failed += 1
        if any(r.escalated for r in rows):
            report.escalated_requests += 1
    return report


def _usd(value: Decimal) -> str:
    return f"${value:,.6f}"


def format_table(report: Report) -> str:
    """The report as a plain-text table for the terminal."""
    lines = [
        f"requests {report.requests}   answered {report.answered}   failed {report.failed}   "
        f"stage calls {report.stage_calls}   budget refusals {report.budget_refusals}",
        f"total spend {_usd(report.total_cost_usd)}   escalation rate {report.escalation_rate:.1%}",
        f"cache hits {report.cache_hits} ({report.cache_hit_rate:.1%})   saved by the cache "
        f"{_usd(report.cache_saved_usd)}",
        f"last stage only (estimate) {_usd(report.all_last_estimate_usd)}   estimated saving "
        f"{_usd(report.estimated_saving_usd)}",
    ]
    sections: list[tuple[str, dict[Any, Spend], Callable[[Any], str]]] = [
        ("model", report.by_model, str),
        ("stage", report.by_stage, lambda s: f"{s}  (escalated {report.stage_escalation_rate(s):.1%})"),
        ("tenant", report.by_tenant, str),
        ("user", report.by_user, str),
        ("day", report.by_day, str),
    ]
    for title, groups, label in sections:
        if not groups:
            continue
        names = {key: label(key) for key in groups}
        width = max(len(title), *(len(n) for n in names.values()))
        lines += ["", f"{title:<{width}}  {'calls':>7}  {'spend (USD)':>14}  {'share':>6}"]
        order = sorted(groups) if title in ("stage", "day") else sorted(groups, key=lambda k: (-groups[k].cost_usd, k))
        for key in order:
            spend = groups[key]
            share = spend.cost_usd / report.total_cost_usd if report.total_cost_usd else Decimal(0)
            lines.append(f"{names[key]:<{width}}  {spend.calls:>7}  {_usd(spend.cost_usd):>14}  {share:>6.1%}")
    return "\n".join(lines)


def write_png(report: Report, path: str | Path) -> Path:
    """Draw spend by model, by day, by tenant and the cascade against the last stage alone as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError("--png needs matplotlib: pip install 'frugal-cascade[report]'") from None
    path = Path(path)
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels: list[tuple[Any, str, dict[str, Decimal]]] = [
        (axes[0][0], "Spend by model (USD)", {k: v.cost_usd for k, v in report.by_model.items()}),
        (axes[0][1], "Spend by day (USD)", {k: v.cost_usd for k, v in sorted(report.by_day.items())}),
        (axes[1][0], "Spend by tenant (USD)", {k: v.cost_usd for k, v in report.by_tenant.items()}),
        (
            axes[1][1],
            "Cascade vs last stage only (USD)",
            {
                "cascade": report.total_cost_usd,
                "last stage only": report.all_last_estimate_usd,
                "cache saved": report.cache_saved_usd,
            },
        ),
    ]
    for axis, title, values in panels:
        axis.bar(list(values), [float(v) for v in values.values()], color="#4477aa")
        axis.set_title(title)
        axis.tick_params(axis="x", labelrotation=20)
    figure.suptitle(
        f"{report.requests} requests, escalation rate {report.escalation_rate:.1%}, "
        f"cache hits {report.cache_hits}, estimated saving ${report.estimated_saving_usd:,.4f}"
    )
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise ConfigurationError(f"cannot write the chart to {str(path)!r}: {exc}") from None
    finally:
        plt.close(figure)
    return path


def report_from(ledger: Ledger | str, since: float | None = None) -> Report:
    """The :class:`Report` of a ledger (or ledger URL), optionally of records with ``ts >= since`` only."""
    return build_report(open_ledger(ledger).records(since))
