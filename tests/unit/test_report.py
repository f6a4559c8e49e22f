"""``frugal report``: the figures from ledger records, the table, the chart and the command."""

from __future__ import annotations

import json
from decimal import Decimal

from shared_scorer import Cascade, StageOutput
from shared_scorer.budget import LedgerCostTracker, SQLiteLedger
from shared_scorer.budget.report import build_report, format_table, write_png
from shared_scorer.cli import main
from shared_scorer.context import Scope
from shared_scorer.outcome import CascadeResult
from shared_scorer.protocols import CacheHit

PRICES = {"small": (1, 2), "big": (10, 20)}
DAY = 1778371200.0  # 2026-05-10T00:00:00Z


def fill(ledger: SQLiteLedger) -> None:
    """Three cascade calls on two days for two tenants, and one cache hit."""
    clock = iter([DAY + 10, DAY + 20, DAY + 86400 + 5, DAY + 86400 + 6])
    scopes = iter([Scope("acme", "ann"), Scope("acme", "bob"), Scope("globex", "cy"), Scope("acme", "ann")])
    tracker = LedgerCostTracker(ledger, scope_of=lambda result: next(scopes), clock=lambda: next(clock))
    scorer = lambda q, a: 0.9 if a == "good" else 0.1  # noqa: E731
    cascade = Cascade(["small", "big"], [0.5], scorer, prices=PRICES, tracker=tracker)
    out = lambda text, tin, tout: lambda: StageOutput(text, tin, tout)  # noqa: E731
    cascade.run("q1", [out("good", 100, 10), out("x", 1, 1)])  # small answers: $0.00012
    cascade.run("q2", [out("meh", 100, 10), out("fine", 100, 20)])  # escalates: $0.00012 + $0.0014
    cascade.run("q3", [out("meh", 50, 5), out("fine", 50, 5)])  # escalates: $0.00006 + $0.0006
    hit = CacheHit("e1", "good", 1.0, "big", Decimal("0.0014"))
    tracker.record(CascadeResult(output=StageOutput("good"), answer_stage=None, attempts=[], cache_hit=hit))


def test_figures_from_records(tmp_path):
    ledger = SQLiteLedger(tmp_path / "l.db")
    fill(ledger)
    report = build_report(ledger.records())
    assert (report.requests, report.answered, report.stage_calls, report.cache_hits) == (4, 4, 5, 1)
    assert report.total_cost_usd == Decimal("0.0023")
    assert {m: s.cost_usd for m, s in report.by_model.items()} == {"small": Decimal("0.0003"), "big": Decimal("0.002")}
    assert {t: s.cost_usd for t, s in report.by_tenant.items()} == {
        "acme": Decimal("0.00164"), "globex": Decimal("0.00066"),
    }  # fmt: skip
    assert {u: s.calls for u, s in report.by_user.items()} == {"acme/ann": 1, "acme/bob": 2, "globex/cy": 2}
    assert {d: s.cost_usd for d, s in report.by_day.items()} == {
        "2026-05-10": Decimal("0.00164"), "2026-05-11": Decimal("0.00066"),
    }  # fmt: skip
    assert report.answered_by_stage == {0: 1, 1: 2}
    assert report.escalation_rate == 2 / 3 and report.stage_escalation_rate(0) == 2 / 3
    assert report.cache_saved_usd == Decimal("0.0014")
    # last stage only: q1 100 in + 10 out at big = 0.0012; q2, q3 were answered by big itself
    assert report.all_last_estimate_usd == Decimal("0.0012") + Decimal("0.0014") + Decimal("0.0006")
    assert report.estimated_saving_usd == Decimal("0.0009")
    table = format_table(report)
    assert "total spend $0.002300   escalation rate 66.7%" in table
    assert "cache hits 1 (25.0%)   saved by the cache $0.001400" in table
    assert "big          2       $0.002000   87.0%" in table
    assert table.index("0  (escalated 66.7%)        3") < table.index("1  (escalated 0.0%)         2")


def test_chart_is_a_png(tmp_path):
    ledger = SQLiteLedger(tmp_path / "l.db")
    fill(ledger)
    path = write_png(build_report(ledger.records()), tmp_path / "spend.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_frugal_report_command(tmp_path, capsys):
    ledger = SQLiteLedger(tmp_path / "l.db")
    fill(ledger)
    code = main(["report", "--ledger", str(tmp_path / "l.db"), "--png", str(tmp_path / "c.png"), "--json",
                 str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "requests 4   answered 4   failed 0   stage calls 5" in out and "chart written to" in out
    figures = json.loads((tmp_path / "r.json").read_text())
    assert Decimal(figures["total_cost_usd"]) == Decimal("0.0023") and figures["by_stage"]["1"]["calls"] == 2
    assert main(["report", "--ledger", str(tmp_path / "missing.db")]) == 2
    assert "ledger" in capsys.readouterr().err
