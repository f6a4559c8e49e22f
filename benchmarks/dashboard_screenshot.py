"""A PNG of ``frugal serve``'s dashboard, drawn by headless Chromium (Debian's ``chromium``; nothing online).

Of a running ``frugal serve --admin-key ...`` (the key in the address, as a browser opens it)::

    python -m benchmarks.dashboard_screenshot --url "http://127.0.0.1:8000/dashboard?key=$FRUGAL_ADMIN_KEY" \\
        --out dashboard.png

or, without ``--url``, of a demonstration ledger (a week of calls for three tenants on a two-stage chain,
with escalations, cache hits and budget refusals) served on 127.0.0.1 for the time of the shot. Prints JSON:
the PNG's path and size, the address shot (its key hidden) and the machine facts. The page's scripts run
for ``--wait-ms`` of Chromium's virtual time first, so the figures are drawn.

:func:`chromium` runs the browser for the tests too (``tests/integration/test_dashboard_browser.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import machine
from shared_scorer.budget import MemoryLedger, SpendRecord

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DEMO_KEY = "demo-admin-key"


def find_chromium() -> str | None:
    """The headless browser's path: ``$CHROMIUM``, else the first of :data:`BROWSERS` on ``PATH``."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def chromium(url: str, *args: str, wait_ms: int = 5000, timeout_s: float = 90.0) -> str:
    """Run headless Chromium on ``url`` with ``args`` (``--dump-dom``, ``--screenshot=PATH``) after the page's
    scripts ran for ``wait_ms`` of virtual time; its standard output (the DOM, for ``--dump-dom``)."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(f"no headless browser found (looked for $CHROMIUM and {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory(prefix="frugal-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",  # as root in a container; the page is ours, served on 127.0.0.1
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={wait_ms}",
            *args,
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{binary} exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def demo_records(now: float) -> list[SpendRecord]:
    """A week of calls on a two-stage chain (mini, then large) for three tenants: escalations, cache hits,
    budget refusals and one failed request, on fixed figures."""
    rows: list[SpendRecord] = []
    users = [("acme", "web"), ("acme", "batch"), ("globex", "svc"), ("initech", "bot")]
    for day in range(7):
        ts = now - (6 - day) * 86400
        date = time.strftime("%Y-%m-%d", time.gmtime(ts))
        for n in range(6 + 3 * day):
            tenant, user = users[n % len(users)]
            request = f"d{day}-{n}"
            common = {"ts": ts + n, "day": date, "request": request, "tenant": tenant, "user": user}
            small = Decimal("0.00021") + Decimal(n % 5) / 100000
            large = Decimal("0.0042") + Decimal(n % 3) / 10000
            if n % 7 == 6:
                hit = {"cost_usd": Decimal(0), "answered": True, "cache_hit": True, "saved_usd": large}
                rows.append(SpendRecord(**common, model="gpt-large", stage=-1, status="cache_hit", **hit))  # type: ignore[arg-type]
            elif n % 3 == 2:
                refused = tenant == "initech" and day == 6
                rows.append(SpendRecord(**common, model="gpt-mini", stage=0, status="rejected", cost_usd=small,  # type: ignore[arg-type]
                                        escalated=True, failed=refused))  # fmt: skip
                rows.append(SpendRecord(**common, model="gpt-large", stage=1,  # type: ignore[arg-type]
                                        status="over_budget" if refused else "accepted",
                                        cost_usd=Decimal(0) if refused else large, answered=not refused,
                                        failed=refused, all_last_usd=Decimal(0) if refused else large))  # fmt: skip
            else:
                rows.append(SpendRecord(**common, model="gpt-mini", stage=0, status="accepted", cost_usd=small,  # type: ignore[arg-type]
                                        answered=True, all_last_usd=large))  # fmt: skip
    return rows


def demo_dashboard(now: float) -> Any:
    """The demonstration ledger's :class:`~shared_scorer.server.dashboard.Dashboard` (key :data:`DEMO_KEY`)."""
    from shared_scorer.server.dashboard import Dashboard

    ledger = MemoryLedger()
    ledger.record(demo_records(now))
    return Dashboard(ledger, admin_key=DEMO_KEY, chain=["gpt-mini", "gpt-large"], thresholds=[0.62])


def screenshot(url: str, out: Path, *, width: int = 1280, height: int = 1900, wait_ms: int = 5000) -> Path:
    """Write the page at ``url`` as a PNG to ``out``."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    chromium(url, f"--screenshot={out}", f"--window-size={width},{height}", "--hide-scrollbars", wait_ms=wait_ms)
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"the browser wrote no screenshot to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the dashboard of a running frugal serve, with ?key=ADMIN_KEY (default: a demo)")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"), help="the PNG (default: dashboard.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1900)
    parser.add_argument("--wait-ms", type=int, default=5000, help="virtual time the page's scripts run first")
    args = parser.parse_args(argv)
    options = {"width": args.width, "height": args.height, "wait_ms": args.wait_ms}
    if args.url:
        path, shown = screenshot(args.url, args.out, **options), args.url
    else:
        from starlette.applications import Starlette

        from shared_scorer.server.testing import serving

        with serving(Starlette(routes=demo_dashboard(time.time()).routes())) as base:
            url = base.removesuffix("/v1") + f"/dashboard?key={DEMO_KEY}"
            path, shown = screenshot(url, args.out, **options), url
    hidden = re.sub(r"([?&]key=)[^&]*", r"\1***", shown)
    print(json.dumps({"png": str(path), "bytes": path.stat().st_size, "url": hidden, "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
