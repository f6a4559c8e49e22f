"""The operator's dashboard of ``frugal serve``: ``/dashboard`` (a page) and ``/dashboard/data`` (its JSON).

Read-only, behind an admin key (``frugal serve --admin-key`` or ``FRUGAL_ADMIN_KEY``; without one, nothing is
mounted). The figures are ``frugal report``'s (:func:`~shared_scorer.budget.report.build_report` over the
ledger's records, so every replica writing to the ledger is counted): spend by tenant, user, model and day;
each stage's acceptance and escalation rates next to the strategy's chain; cache hits and what they saved;
budget refusals. The page draws its charts as inline SVG in plain JavaScript (no CDN: it works offline) and
polls the JSON every few seconds. Every name on it (tenants, users: a request's ``user`` field is the
caller's text) is set as text, never as HTML.

The key goes in an ``Authorization: Bearer KEY`` header, or ``?key=KEY`` in the page's address for a
browser (the page then sends it as a header). A missing key is a 401, a wrong one a 403::

    dashboard = Dashboard(ledger, admin_key="...", chain=strategy.chain, thresholds=strategy.thresholds)
    app = make_app(backend, keys, budget, routes=dashboard.routes())

>>> from decimal import Decimal
>>> from shared_scorer.budget import MemoryLedger, SpendRecord
>>> ledger = MemoryLedger()
>>> ledger.record([SpendRecord(0.0, "1970-01-01", "q1", "acme", "ann", "small", 0, "accepted", Decimal("0.25"),
...                            answered=True, all_last_usd=Decimal("1.25"))])
>>> board = Dashboard(ledger, admin_key="admin", chain=["small", "big"], thresholds=[0.5], window_days=None)
>>> data = board.data()
>>> data["total_cost_usd"], data["by_tenant"], data["stages"][0]["acceptance_rate"]
('0.25', {'acme': {'calls': 1, 'cost_usd': '0.25'}}, 1.0)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from shared_scorer.budget.ledger import Ledger
from shared_scorer.budget.report import Report, build_report
from shared_scorer.budget.urls import open_ledger
from shared_scorer.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

ADMIN_KEY_ENV = "FRUGAL_ADMIN_KEY"
"""The environment variable ``frugal serve`` reads the admin key from when ``--admin-key`` is not given."""
DEFAULT_REFRESH_S = 3.0
"""How often the page asks for fresh figures."""
DEFAULT_WINDOW_DAYS = 30.0
"""The dashboard counts the records of the last this many days (``None``: all of them)."""
MIN_READ_INTERVAL_S = 1.0
"""Figures younger than this are served again instead of reading the ledger once more (several open pages)."""

HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the key may be in the page's address
    "X-Frame-Options": "DENY",
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def stage_rows(report: Report, chain: Sequence[str], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """One row per stage (of the chain, and any other stage the records name): its model and threshold from
    the chain, and from the report its calls, spend, how many it answered and after how many the query
    moved on, as rates of its calls."""
    rows = []
    for stage in sorted(set(range(len(chain))) | set(report.by_stage)):
        spend = report.by_stage.get(stage)
        calls = spend.calls if spend is not None else 0
        accepted = report.answered_by_stage.get(stage, 0)
        escalated = report.escalated_by_stage.get(stage, 0)
        rows.append(
            {
                "stage": stage,
                "model": chain[stage] if 0 <= stage < len(chain) else None,
                "threshold": thresholds[stage] if 0 <= stage < len(thresholds) else None,
                "calls": calls,
                "cost_usd": str(spend.cost_usd) if spend is not None else "0",
                "accepted": accepted,
                "escalated": escalated,
                "acceptance_rate": round(accepted / calls, 4) if calls else 0.0,
                "escalation_rate": round(report.stage_escalation_rate(stage), 4),
            }
        )
    return rows


class Dashboard:
    """The figures and the routes of ``/dashboard``: ``ledger`` (a :class:`Ledger` or a ledger URL) read
    through ``frugal report``'s aggregation; ``chain`` and ``thresholds`` the strategy being served.

    ``window_days`` limits the records read to the last so many days (``None``: all); figures younger than
    ``min_read_interval_s`` are served again instead of reading the ledger once more; ``clock`` is for tests.
    :meth:`data` is the JSON the page polls; :meth:`routes` the Starlette routes to mount.
    """

    def __init__(
        self,
        ledger: Ledger | str,
        *,
        admin_key: str,
        chain: Sequence[str] = (),
        thresholds: Sequence[float] = (),
        refresh_s: float = DEFAULT_REFRESH_S,
        window_days: float | None = DEFAULT_WINDOW_DAYS,
        min_read_interval_s: float = MIN_READ_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not admin_key or admin_key != admin_key.strip():
            raise ConfigurationError("the dashboard's admin key must be a non-empty string without surrounding spaces")
        if not refresh_s > 0:
            raise ConfigurationError(f"the dashboard's refresh_s must be > 0, got {refresh_s}")
        if window_days is not None and not window_days > 0:
            raise ConfigurationError(f"the dashboard's window_days must be > 0 or None, got {window_days}")
        self.ledger = open_ledger(ledger)
        self.chain = [str(model) for model in chain]
        self.thresholds = [float(t) for t in thresholds]
        self.refresh_s = refresh_s
        self.window_days = window_days
        self.min_read_interval_s = min_read_interval_s
        self._clock = clock
        self._key_digest = _digest(admin_key)
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any]] | None = None

    def data(self) -> dict[str, Any]:
        """The figures: ``frugal report``'s (:meth:`Report.as_dict`: money as exact decimal strings) plus
        ``stages`` (see :func:`stage_rows`), ``chain``, ``thresholds``, ``generated_at``, ``since``
        (epoch seconds, or ``None``) and ``refresh_s``."""
        now = self._clock()
        since = now - self.window_days * 86400 if self.window_days is not None else None
        report = build_report(self.ledger.records(since))
        return {
            **report.as_dict(),
            "stages": stage_rows(report, self.chain, self.thresholds),
            "chain": list(self.chain),
            "thresholds": list(self.thresholds),
            "generated_at": now,
            "since": since,
            "refresh_s": self.refresh_s,
        }

    def recent_data(self) -> dict[str, Any]:
        """:meth:`data`, read again only when the last read is older than ``min_read_interval_s``."""
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self.min_read_interval_s:
                self._last = (now, self.data())
            return self._last[1]

    def refusal(self, request: Request) -> Response | None:
        """``None`` for the admin key (bearer header, or ``?key=``); else a 401 (no key) or 403 (wrong key)."""
        from starlette.responses import JSONResponse

        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.query_params.get("key", "")
        if key and hmac.compare_digest(_digest(key), self._key_digest):
            return None
        status, message = (
            (403, "This key cannot read the dashboard.") if key else (401, "The dashboard needs the admin key.")
        )
        body = {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_admin_key"}}
        return JSONResponse(body, status_code=status, headers=HEADERS)

    async def page(self, request: Request) -> Response:
        from starlette.responses import HTMLResponse

        refused = self.refusal(request)
        if refused is not None:
            return refused
        html = PAGE.replace("__REFRESH_MS__", str(int(self.refresh_s * 1000)))
        return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": PAGE_POLICY})

    async def json(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        refused = self.refusal(request)
        if refused is not None:
            return refused
        data = await asyncio.to_thread(self.recent_data)  # SQLite and Redis reads block
        return JSONResponse(data, headers=HEADERS)

    def routes(self) -> list[Route]:
        """``GET /dashboard`` (the page) and ``GET /dashboard/data`` (its JSON), for ``make_app(routes=...)``."""
        from starlette.routing import Route

        return [
            Route("/dashboard", self.page, methods=["GET"]),
            Route("/dashboard/data", self.json, methods=["GET"]),
        ]


def serve_routes(
    admin_key: str | None,
    ledger: Ledger | str,
    *,
    chain: Sequence[str] = (),
    thresholds: Sequence[float] = (),
    api_keys: Collection[str] = (),
) -> list[Route]:
    """The dashboard's routes as ``frugal serve`` mounts them: none without an admin key; an error when the
    admin key is also one of the ``api_keys`` (a tenant's key must not read every tenant's spend)."""
    if not admin_key:
        return []
    if admin_key in api_keys:
        raise ConfigurationError(
            f"--admin-key (or {ADMIN_KEY_ENV}) is also an API key in the keys file: give the dashboard a key of its own"
        )
    return Dashboard(ledger, admin_key=admin_key, chain=chain, thresholds=thresholds).routes()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>frugal serve: dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;justify-content:space-between;align-items:baseline}
header h1{font-size:18px;margin:0}#status{font-size:12px;color:#c9d1e0}#status.error{color:#ff9b8f}
main{padding:16px 24px;display:grid;gap:16px;grid-template-columns:repeat(auto-fit,minmax(420px,1fr))}
section{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
section.wide{grid-column:1/-1}h2{font-size:14px;margin:0 0 8px;color:#4a5468;text-transform:uppercase}
.tiles{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(150px,1fr))}
.tile{border-left:3px solid #4477aa;padding:2px 10px}.tile b{display:block;font-size:20px}
.tile span{color:#4a5468;font-size:12px}table{border-collapse:collapse;width:100%;margin-top:6px}
th,td{text-align:right;padding:3px 8px;border-bottom:1px solid #eceef2;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}.chain{display:flex;flex-wrap:wrap;gap:6px;align-items:center}
.chain .model{background:#e8eef7;border-radius:4px;padding:3px 8px;font-weight:600}.chain .arrow{color:#8a93a6}
svg{display:block;max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#1d2330}.empty{color:#8a93a6}
</style></head>
<body>
<header><h1>frugal serve: dashboard</h1><div id="status" data-polls="0">loading...</div></header>
<main>
<section class="wide"><h2>Totals</h2><div class="tiles">
<div class="tile"><b id="total-spend">-</b><span>spend (USD)</span></div>
<div class="tile"><b id="requests">-</b><span>requests</span></div>
<div class="tile"><b id="answered">-</b><span>answered</span></div>
<div class="tile"><b id="escalation-rate">-</b><span>escalation rate</span></div>
<div class="tile"><b id="cache-hits">-</b><span>cache hits</span></div>
<div class="tile"><b id="cache-hit-rate">-</b><span>cache hit rate</span></div>
<div class="tile"><b id="cache-saved">-</b><span>saved by the cache (USD)</span></div>
<div class="tile"><b id="budget-refusals">-</b><span>budget refusals</span></div>
<div class="tile"><b id="estimated-saving">-</b><span>saved vs last stage only (USD, est.)</span></div>
</div></section>
<section class="wide"><h2>Strategy chain</h2><div class="chain" id="chain"></div></section>
<section class="wide"><h2>Stages: acceptance and escalation</h2><div id="stages-chart"></div>
<table id="stages"><thead><tr><th>stage</th><th>model</th><th>threshold</th><th>calls</th><th>accepted</th>
<th>acceptance</th><th>escalated</th><th>escalation</th><th>spend (USD)</th></tr></thead><tbody></tbody></table>
</section>
<section class="wide"><h2>Spend by day</h2><div id="day-chart"></div>
<table id="by-day"><thead><tr><th>day</th><th>calls</th><th>spend (USD)</th></tr></thead><tbody></tbody>
</table></section>
<section><h2>Spend by tenant</h2><div id="tenant-chart"></div>
<table id="by-tenant"><thead><tr><th>tenant</th><th>calls</th><th>spend (USD)</th></tr></thead><tbody></tbody>
</table></section>
<section><h2>Spend by user</h2><div id="user-chart"></div>
<table id="by-user"><thead><tr><th>tenant/user</th><th>calls</th><th>spend (USD)</th></tr></thead><tbody></tbody>
</table></section>
<section><h2>Spend by model</h2><div id="model-chart"></div>
<table id="by-model"><thead><tr><th>model</th><th>calls</th><th>spend (USD)</th></tr></thead><tbody></tbody>
</table></section>
</main>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const SVG = "http://www.w3.org/2000/svg";
const key = new URLSearchParams(location.search).get("key");
const dataUrl = location.pathname.replace(/\\/+$/, "") + "/data";
let polls = 0;

function $(id) { return document.getElementById(id); }
function pct(x) { return (100 * x).toFixed(1) + "%"; }
function setText(id, text) { $(id).textContent = text; }
function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows.map(cells => {
    const tr = el("tr");
    for (const c of cells) tr.appendChild(el("td", {}, String(c)));
    return tr;
  }));
}
function bars(id, items) {
  // Horizontal bars: items [{label, value, text}], value a number (share of the largest).
  const box = $(id), width = 560, row = 22, left = 170;
  if (!items.length) { box.replaceChildren(el("p", {class: "empty"}, "no calls yet")); return; }
  const max = Math.max(...items.map(i => i.value)) || 1;
  const svg = el("svg:svg", {viewBox: `0 0 ${width} ${items.length * row + 4}`, width, role: "img"});
  items.forEach((item, i) => {
    const y = i * row + 2, w = Math.max(1, (width - left - 110) * item.value / max);
    const short = item.label.length > 26 ? item.label.slice(0, 25) + "\\u2026" : item.label;
    const label = el("svg:text", {x: 0, y: y + 15}, short);
    label.appendChild(el("svg:title", {}, item.label));
    svg.appendChild(label);
    svg.appendChild(el("svg:rect", {x: left, y: y + 3, width: w, height: row - 8, fill: "#4477aa", rx: 2}));
    svg.appendChild(el("svg:text", {x: left + w + 6, y: y + 15}, item.text));
  });
  box.replaceChildren(svg);
}
function columns(id, items) {
  // Vertical columns per day: items [{label, value, text}].
  const box = $(id), height = 170, width = Math.max(560, items.length * 46), base = height - 34;
  if (!items.length) { box.replaceChildren(el("p", {class: "empty"}, "no calls yet")); return; }
  const max = Math.max(...items.map(i => i.value)) || 1, step = width / items.length;
  const svg = el("svg:svg", {viewBox: `0 0 ${width} ${height}`, width, role: "img"});
  items.forEach((item, i) => {
    const h = Math.max(1, (base - 16) * item.value / max), x = i * step + step * 0.2;
    svg.appendChild(el("svg:rect", {x, y: base - h, width: step * 0.6, height: h, fill: "#4477aa", rx: 2}));
    svg.appendChild(el("svg:text", {x: i * step + step / 2, y: base - h - 4, "text-anchor": "middle"}, item.text));
    const middle = i * step + step / 2;
    svg.appendChild(el("svg:text", {x: middle, y: base + 16, "text-anchor": "middle"}, item.label.slice(5)));
  });
  box.replaceChildren(svg);
}
function stageChart(stages) {
  // Per stage: a bar split into accepted, escalated and other outcomes (as shares of its calls).
  const box = $("stages-chart"), width = 560, row = 26, left = 170;
  if (!stages.length) { box.replaceChildren(el("p", {class: "empty"}, "no stages")); return; }
  const svg = el("svg:svg", {viewBox: `0 0 ${width} ${stages.length * row + 24}`, width, role: "img"});
  const span = width - left - 10;
  stages.forEach((s, i) => {
    const y = i * row + 2, a = s.acceptance_rate, e = s.escalation_rate;
    svg.appendChild(el("svg:text", {x: 0, y: y + 16}, `${s.stage}: ${s.model === null ? "?" : s.model}`));
    svg.appendChild(el("svg:rect", {x: left, y: y + 4, width: span, height: row - 10, fill: "#eceef2"}));
    svg.appendChild(el("svg:rect", {x: left, y: y + 4, width: span * a, height: row - 10, fill: "#228833"}));
    svg.appendChild(el("svg:rect", {x: left + span * a, y: y + 4, width: span * e, height: row - 10, fill: "#ee7733"}));
  });
  const y = stages.length * row + 16;
  svg.appendChild(el("svg:rect", {x: left, y: y - 9, width: 10, height: 10, fill: "#228833"}));
  svg.appendChild(el("svg:text", {x: left + 14, y}, "accepted"));
  svg.appendChild(el("svg:rect", {x: left + 90, y: y - 9, width: 10, height: 10, fill: "#ee7733"}));
  svg.appendChild(el("svg:text", {x: left + 104, y}, "escalated"));
  box.replaceChildren(svg);
}
function spendItems(groups) {
  return Object.entries(groups)
    .map(([name, s]) => ({label: name, value: Number(s.cost_usd), text: "$" + s.cost_usd, calls: s.calls,
                          cost: s.cost_usd}))
    .sort((a, b) => b.value - a.value || (a.label < b.label ? -1 : 1));
}
function render(d) {
  setText("total-spend", "$" + d.total_cost_usd);
  setText("requests", String(d.requests));
  setText("answered", String(d.answered));
  setText("escalation-rate", pct(d.escalation_rate));
  setText("cache-hits", String(d.cache_hits));
  setText("cache-hit-rate", pct(d.cache_hit_rate));
  setText("cache-saved", "$" + d.cache_saved_usd);
  setText("budget-refusals", String(d.budget_refusals));
  setText("estimated-saving", "$" + d.estimated_saving_usd);
  const chain = $("chain");
  chain.replaceChildren();
  if (!d.chain.length) chain.appendChild(el("span", {class: "empty"}, "no strategy named"));
  d.chain.forEach((model, i) => {
    const rule = `\\u2192 (p \\u2265 ${d.thresholds[i - 1]} accepts) \\u2192`;
    if (i) chain.appendChild(el("span", {class: "arrow"}, rule));
    chain.appendChild(el("span", {class: "model"}, model));
  });
  stageChart(d.stages);
  fillTable("stages", d.stages.map(s => [s.stage, s.model === null ? "?" : s.model,
    s.threshold === null ? "-" : s.threshold, s.calls, s.accepted, pct(s.acceptance_rate), s.escalated,
    pct(s.escalation_rate), s.cost_usd]));
  const days = Object.entries(d.by_day)
    .map(([day, s]) => ({label: day, value: Number(s.cost_usd), text: "$" + s.cost_usd}));
  columns("day-chart", days);
  fillTable("by-day", Object.entries(d.by_day).map(([day, s]) => [day, s.calls, s.cost_usd]));
  for (const [name, groups] of [["tenant", d.by_tenant], ["user", d.by_user], ["model", d.by_model]]) {
    const items = spendItems(groups);
    bars(name + "-chart", items);
    fillTable("by-" + name, items.map(i => [i.label, i.calls, i.cost]));
  }
}
async function poll() {
  const status = $("status");
  try {
    const response = await fetch(dataUrl, {headers: key ? {Authorization: "Bearer " + key} : {}, cache: "no-store"});
    if (!response.ok) throw new Error(response.status === 401 || response.status === 403 ?
      "the admin key is missing or wrong: open /dashboard?key=ADMIN_KEY" : "HTTP " + response.status);
    render(await response.json());
    polls += 1;
    status.className = "";
    status.dataset.polls = String(polls);
    status.textContent = "updated " + new Date().toLocaleTimeString() + ", every " + REFRESH_MS / 1000 + " s";
  } catch (err) {
    status.className = "error";
    status.textContent = "not updated: " + err.message;
  }
  setTimeout(poll, REFRESH_MS);
}
poll();
</script>
</body></html>
"""
