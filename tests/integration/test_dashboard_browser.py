"""The dashboard in a real browser: headless Chromium loads ``/dashboard`` from a running ``frugal serve``
gateway and the test reads the figures the page's scripts drew.

The gateway serves a two-stage ``FrugalChatModel`` (``ChatOpenAI`` stages on the replay server) whose cost
tracker writes to the ledger the dashboard reads. The ledger holds known records, plus one real request made
through the gateway with the ``openai`` client; one more record lands after the page's first poll, so the
figures shown are those of a later poll (the page refreshes itself). In CI a missing ``chromium`` fails.
"""

from __future__ import annotations

import importlib.util
import time
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from benchmarks.dashboard_screenshot import chromium, find_chromium
from shared_scorer.budget import LedgerCostTracker, MemoryLedger, SpendRecord
from shared_scorer.server.testing import make_record, replay_server, serving
from tests.conftest import require

SMALL, BIG = "dash-small", "dash-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
QUESTION = "Who wrote Middlemarch?"
ADMIN = "admin-key-for-the-browser"
KEYS = {"sk-team": {"tenant": "team"}}
DAY = 1778371200.0  # 2026-05-10T00:00:00Z
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"  # a request's "user" field is the caller's text


def row(ts: float, request: str, tenant: str, user: str, model: str, stage: int, status: str, cost: str,
        **extra: object) -> SpendRecord:  # fmt: skip
    day = time.strftime("%Y-%m-%d", time.gmtime(ts))
    return SpendRecord(ts, day, request, tenant, user, model, stage, status, Decimal(cost), **extra)  # type: ignore[arg-type]


KNOWN = [
    row(DAY + 10, "q1", "acme", "ann", SMALL, 0, "accepted", "0.00012", answered=True, all_last_usd=Decimal("0.0012")),
    row(DAY + 20, "q2", "acme", HOSTILE, SMALL, 0, "rejected", "0.00012", escalated=True),
    row(DAY + 20, "q2", "acme", HOSTILE, BIG, 1, "accepted", "0.0014", answered=True, all_last_usd=Decimal("0.0014")),
    row(DAY + 30, "q3", "globex", "cy", SMALL, 0, "over_budget", "0", failed=True),
    row(DAY + 40, "q4", "acme", "ann", BIG, -1, "cache_hit", "0", answered=True, cache_hit=True,
        saved_usd=Decimal("0.0014")),
]  # fmt: skip
LATE = row(DAY + 86400 + 5, "q5", "globex", "cy", SMALL, 0, "accepted", "0.00005", answered=True)


class LateLedger(MemoryLedger):
    """A ledger whose records gain :data:`LATE` from the second read on: a call that lands between polls."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def records(self, since: float | None = None) -> list[SpendRecord]:
        self.reads += 1
        return super().records(since) + ([LATE] if self.reads > 1 else [])


class Page(HTMLParser):
    """The text inside every element with an ``id``, each table's body rows, and the ``data-*`` attributes."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.rects: dict[str, int] = {}
        self.tags: list[str] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of every open element
        self._cell: list[str] | None = None
        self.feed(dom)

    def _inside(self, tag: str) -> str | None:
        return next((i for t, i in reversed(self._open) if t == tag and i), None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        ident = found.get("id")
        if tag == "rect":
            holder = next((i for _, i in reversed(self._open) if i), None)
            if holder is not None:
                self.rects[holder] = self.rects.get(holder, 0) + 1
        if tag in ("img", "br", "meta", "input"):  # HTML's void elements (SVG's rect is closed in the DOM)
            return
        self._open.append((tag, ident))
        if ident:
            self.attrs[ident] = found
            self.text.setdefault(ident, "")
        table = self._inside("table")
        if tag == "tr" and table and any(t == "tbody" for t, _ in self._open):
            self.rows.setdefault(table, []).append([])
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            table = self._inside("table")
            if table:
                self.rows[table][-1].append("".join(self._cell))
            self._cell = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] += data
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def shown() -> tuple[Page, str, LateLedger]:
    require(find_chromium() is not None, "chromium is not installed (apt-get install chromium)")
    for package in ("uvicorn", "starlette", "langchain_openai", "openai"):
        require(importlib.util.find_spec(package) is not None, f"{package} is not installed")
    import openai
    from langchain_openai import ChatOpenAI

    from frugal_langchain import FrugalChatModel
    from frugal_langchain.serve import LangChainBackend
    from shared_scorer.server.dashboard import Dashboard
    from shared_scorer.server.gateway import make_app

    ledger = LateLedger()
    ledger.record(KNOWN)
    records = [
        make_record(QUESTION, "George Eliot", model=SMALL, input_tokens=12, output_tokens=3),
        make_record(QUESTION, "George Eliot (Mary Ann Evans)", model=BIG, input_tokens=12, output_tokens=9),
    ]
    with replay_server(records) as replay:
        stages = [ChatOpenAI(model=m, base_url=replay.base_url, api_key="x", max_retries=0, timeout=5,  # type: ignore[arg-type]
                             max_tokens=50, stream_usage=True) for m in (SMALL, BIG)]  # type: ignore[call-arg]  # fmt: skip
        model = FrugalChatModel(stages=stages, scorer=lambda q, a: 0.9, thresholds=[0.5], prices=PRICES,
                                cost_tracker=LedgerCostTracker(ledger))  # fmt: skip
        board = Dashboard(ledger, admin_key=ADMIN, chain=[SMALL, BIG], thresholds=[0.5], refresh_s=1.0,
                          window_days=None, min_read_interval_s=0.0)  # fmt: skip
        app = make_app(LangChainBackend(model), KEYS, routes=board.routes())
        with serving(app) as base_url:
            client = openai.OpenAI(base_url=base_url, api_key="sk-team", max_retries=0)
            reply = client.chat.completions.create(
                model="frugal", messages=[{"role": "user", "content": QUESTION}], user="dash"
            )
            assert reply.choices[0].message.content == "George Eliot"
            url = base_url.removesuffix("/v1") + f"/dashboard?key={ADMIN}"
            dom = chromium(url, "--dump-dom", wait_ms=5000)
    return Page(dom), dom, ledger


def test_the_page_shows_the_ledgers_figures(shown) -> None:
    page, _, ledger = shown
    today = time.strftime("%Y-%m-%d", time.gmtime())
    # q1 $0.00012, q2 $0.00012 + $0.0014, the real request (12 in, 3 out at $0.5/$1.5 per Mtok) $0.0000105,
    # and q5 $0.00005, which only a later poll sees
    assert page.text["total-spend"] == "$0.0017005"
    assert (page.text["requests"], page.text["answered"]) == ("6", "5")
    assert page.text["escalation-rate"] == "20.0%"  # q2 of the 5 requests a stage answered or refused
    assert (page.text["cache-hits"], page.text["cache-hit-rate"], page.text["cache-saved"]) == ("1", "16.7%", "$0.0014")
    assert page.text["budget-refusals"] == "1"
    assert page.text["chain"] == f"{SMALL}\u2192 (p \u2265 0.5 accepts) \u2192{BIG}"
    assert page.rows["stages"] == [
        ["0", SMALL, "0.5", "4", "3", "75.0%", "1", "25.0%", "0.0003005"],
        ["1", BIG, "-", "1", "1", "100.0%", "0", "0.0%", "0.0014"],
    ]
    assert page.rows["by-tenant"] == [["acme", "3", "0.00164"], ["globex", "1", "0.00005"], ["team", "1", "0.0000105"]]
    assert page.rows["by-model"] == [[BIG, "1", "0.0014"], [SMALL, "4", "0.0003005"]]
    assert page.rows["by-day"] == [
        ["2026-05-10", "3", "0.00164"],
        ["2026-05-11", "1", "0.00005"],
        [today, "1", "0.0000105"],
    ]
    assert page.rows["by-user"] == [
        [f"acme/{HOSTILE}", "2", "0.00152"], ["acme/ann", "1", "0.00012"], ["globex/cy", "1", "0.00005"],
        ["team/dash", "1", "0.0000105"],
    ]  # fmt: skip
    assert ledger.reads >= 2


def test_the_charts_are_drawn_in_the_page(shown) -> None:
    page, dom, _ = shown
    # one bar per group; the stage chart draws a track, an accepted and an escalated bar per stage, and a legend
    assert (page.rects["tenant-chart"], page.rects["user-chart"], page.rects["model-chart"]) == (3, 4, 2)
    assert (page.rects["day-chart"], page.rects["stages-chart"]) == (3, 2 * 3 + 2)
    assert "$0.00164" in page.text["tenant-chart"] and "05-10" in page.text["day-chart"]
    assert "<script src" not in dom and "<link" not in dom  # nothing loaded from elsewhere


def test_the_page_refreshed_itself_and_inserted_no_markup(shown) -> None:
    page, dom, _ = shown
    assert int(page.attrs["status"]["data-polls"] or 0) >= 2
    assert page.text["status"].startswith("updated ")
    assert "img" not in page.tags and "pwned" not in dom.split("<title>")[1].split("</title>")[0]
