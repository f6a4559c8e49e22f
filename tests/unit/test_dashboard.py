"""``frugal serve``'s operator dashboard: the figures it serves (exact), and who may read them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from shared_scorer.budget import MemoryLedger, SpendRecord
from shared_scorer.context import Scope
from shared_scorer.errors import ConfigurationError
from shared_scorer.server.dashboard import Dashboard, serve_routes
from shared_scorer.server.gateway import ChatReply, ChatRequest, StreamEvent

DAY = 1778371200.0  # 2026-05-10T00:00:00Z
ADMIN = "admin-secret"
KEYS = {"sk-acme": {"tenant": "acme", "user": "svc"}}


def row(ts: float, request: str, tenant: str, user: str, model: str, stage: int, status: str, cost: str,
        **extra: object) -> SpendRecord:  # fmt: skip
    day = "2026-05-10" if ts < DAY + 86400 else "2026-05-11"
    return SpendRecord(ts, day, request, tenant, user, model, stage, status, Decimal(cost), **extra)  # type: ignore[arg-type]


def known_records() -> list[SpendRecord]:
    """Four requests on two days, plus one older than the dashboard's 30-day window:

    q1 acme/ann   small answers                                   $0.00012
    q2 acme/bob   small rejected, big answers                     $0.00012 + $0.0014
    q3 globex/cy  small rejected, big refused by the budget       $0.00006 (the request failed)
    q4 acme/ann   a cache hit, which saved $0.0014
    """
    return [
        row(DAY - 40 * 86400, "q0", "acme", "old", "big", 0, "accepted", "5", answered=True),
        row(DAY + 10, "q1", "acme", "ann", "small", 0, "accepted", "0.00012", input_tokens=100, output_tokens=10,
            answered=True, all_last_usd=Decimal("0.0012")),
        row(DAY + 20, "q2", "acme", "bob", "small", 0, "rejected", "0.00012", escalated=True),
        row(DAY + 20, "q2", "acme", "bob", "big", 1, "accepted", "0.0014", answered=True,
            all_last_usd=Decimal("0.0014")),
        row(DAY + 86400 + 5, "q3", "globex", "cy", "small", 0, "rejected", "0.00006", escalated=True, failed=True),
        row(DAY + 86400 + 5, "q3", "globex", "cy", "big", 1, "over_budget", "0", failed=True),
        row(DAY + 86400 + 6, "q4", "acme", "ann", "big", -1, "cache_hit", "0", answered=True, cache_hit=True,
            saved_usd=Decimal("0.0014")),
    ]  # fmt: skip


def ledger_with(records: list[SpendRecord]) -> MemoryLedger:
    ledger = MemoryLedger()
    ledger.record(records)
    return ledger


def dashboard(ledger: MemoryLedger | None = None) -> Dashboard:
    return Dashboard(
        ledger if ledger is not None else ledger_with(known_records()),
        admin_key=ADMIN,
        chain=["small", "big"],
        thresholds=[0.5],
        clock=lambda: DAY + 2 * 86400,
    )


def test_the_figures_of_known_records_are_exact() -> None:
    data = dashboard().data()
    assert (data["requests"], data["answered"], data["failed"], data["stage_calls"]) == (4, 3, 1, 4)
    assert data["total_cost_usd"] == "0.00170"  # the q0 row ($5, 40 days old) is outside the window
    assert data["by_tenant"] == {
        "acme": {"calls": 3, "cost_usd": "0.00164"},
        "globex": {"calls": 1, "cost_usd": "0.00006"},
    }
    assert data["by_user"] == {
        "acme/ann": {"calls": 1, "cost_usd": "0.00012"},
        "acme/bob": {"calls": 2, "cost_usd": "0.00152"},
        "globex/cy": {"calls": 1, "cost_usd": "0.00006"},
    }
    assert data["by_model"] == {"big": {"calls": 1, "cost_usd": "0.0014"}, "small": {"calls": 3, "cost_usd": "0.00030"}}
    assert data["by_day"] == {
        "2026-05-10": {"calls": 3, "cost_usd": "0.00164"},
        "2026-05-11": {"calls": 1, "cost_usd": "0.00006"},
    }
    assert data["stages"] == [
        {"stage": 0, "model": "small", "threshold": 0.5, "calls": 3, "cost_usd": "0.00030", "accepted": 1,
         "escalated": 2, "acceptance_rate": 0.3333, "escalation_rate": 0.6667},
        {"stage": 1, "model": "big", "threshold": None, "calls": 1, "cost_usd": "0.0014", "accepted": 1,
         "escalated": 0, "acceptance_rate": 1.0, "escalation_rate": 0.0},
    ]  # fmt: skip
    assert (data["budget_refusals"], data["cache_hits"], data["cache_hit_rate"]) == (1, 1, 0.25)
    assert data["cache_saved_usd"] == "0.0014"
    assert data["escalation_rate"] == 0.6667
    assert data["estimated_cost_if_last_stage_only_usd"] == "0.0026"
    assert data["estimated_saving_usd"] == "0.00090"
    assert (data["chain"], data["thresholds"]) == (["small", "big"], [0.5])
    assert (data["generated_at"], data["since"], data["refresh_s"]) == (DAY + 2 * 86400, DAY - 28 * 86400, 3.0)


def test_without_a_window_every_record_counts_and_unnamed_stages_show() -> None:
    board = Dashboard(ledger_with(known_records()), admin_key=ADMIN, window_days=None)
    data = board.data()
    assert data["total_cost_usd"] == "5.00170" and data["since"] is None
    assert [(s["stage"], s["model"], s["calls"], s["accepted"]) for s in data["stages"]] == [
        (0, None, 4, 2),
        (1, None, 1, 1),
    ]


def test_an_empty_ledger_shows_the_chain_with_no_calls() -> None:
    data = dashboard(MemoryLedger()).data()
    assert data["total_cost_usd"] == "0" and data["requests"] == 0
    assert [(s["model"], s["calls"], s["acceptance_rate"]) for s in data["stages"]] == [
        ("small", 0, 0.0),
        ("big", 0, 0.0),
    ]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="admin key must be a non-empty string"):
        Dashboard(MemoryLedger(), admin_key="")
    with pytest.raises(ConfigurationError, match="window_days must be > 0"):
        Dashboard(MemoryLedger(), admin_key=ADMIN, window_days=0)


# --- who may read it ------------------------------------------------------------------------------------


class EchoBackend:
    """A serve backend that answers every request with "ok" (the dashboard never calls it)."""

    name = "echo"

    async def complete(self, request: ChatRequest, scope: Scope) -> ChatReply:
        return ChatReply("ok")

    async def stream(self, request: ChatRequest, scope: Scope) -> AsyncIterator[StreamEvent]:
        yield StreamEvent(reply=ChatReply("ok"))


@pytest.fixture
def client():
    from starlette.testclient import TestClient

    from shared_scorer.server.gateway import make_app

    return TestClient(make_app(EchoBackend(), KEYS, routes=dashboard().routes()))


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/data"])
def test_no_key_is_401_and_a_wrong_or_tenant_key_403(client, path) -> None:
    missing = client.get(path)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_admin_key"
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.get(path, params={"key": "nope"}).status_code == 403
    assert client.get(path, headers={"Authorization": "Bearer sk-acme"}).status_code == 403  # a tenant's key
    assert "0.00164" not in missing.text


def test_the_admin_key_reads_the_figures_and_the_page(client) -> None:
    data = client.get("/dashboard/data", headers={"Authorization": f"Bearer {ADMIN}"})
    assert data.status_code == 200 and data.headers["cache-control"] == "no-store"
    assert data.json()["by_tenant"]["acme"] == {"calls": 3, "cost_usd": "0.00164"}
    assert client.get("/dashboard/data", params={"key": ADMIN}).json()["total_cost_usd"] == "0.00170"
    page = client.get("/dashboard", params={"key": ADMIN})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "const REFRESH_MS = 3000;" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from outside


def test_the_dashboard_is_read_only(client) -> None:
    for method in ("post", "put", "delete"):
        response = client.request(method.upper(), "/dashboard/data", headers={"Authorization": f"Bearer {ADMIN}"})
        assert response.status_code == 405


def test_without_an_admin_key_there_is_no_dashboard() -> None:
    from starlette.testclient import TestClient

    from shared_scorer.server.gateway import make_app

    assert serve_routes(None, MemoryLedger()) == [] and serve_routes("", MemoryLedger()) == []
    client = TestClient(make_app(EchoBackend(), KEYS, routes=serve_routes(None, MemoryLedger())))
    assert client.get("/dashboard", params={"key": ADMIN}).status_code == 404
    assert client.get("/dashboard/data", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 404


def test_serve_routes_mount_both_paths_and_refuse_a_tenant_key_as_admin_key() -> None:
    routes = serve_routes(ADMIN, MemoryLedger(), chain=["small"], api_keys=KEYS)
    assert [route.path for route in routes] == ["/dashboard", "/dashboard/data"]
    with pytest.raises(ConfigurationError, match="also an API key in the keys file"):
        serve_routes("sk-acme", MemoryLedger(), api_keys=KEYS)


@pytest.mark.parametrize("by_env", [False, True])
def test_frugal_serve_refuses_a_tenant_key_as_admin_key(tmp_path, monkeypatch, capsys, by_env) -> None:
    import json

    from shared_scorer.cli import main
    from shared_scorer.strategy import Frontier, FrontierPoint, Strategy

    pytest.importorskip("uvicorn")
    strategy = Strategy.from_frontier(Frontier([FrontierPoint(("small",), (), 0.5, 0.001)]), scorer="s",
                                      data_fingerprint="x").save(tmp_path)  # fmt: skip
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    argv = ["serve", "--strategy", str(strategy), "--keys", str(keys), "--stages-base-url", "http://127.0.0.1:9/v1",
            "--ledger", str(tmp_path / "ledger.db")]  # fmt: skip
    if by_env:
        monkeypatch.setenv("FRUGAL_ADMIN_KEY", "sk-acme")
    else:
        monkeypatch.delenv("FRUGAL_ADMIN_KEY", raising=False)
        argv += ["--admin-key", "sk-acme"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("frugal serve: error: --admin-key (or FRUGAL_ADMIN_KEY) is also an API key in the keys file")
