"""`sparsegate admin …` against an in-process gateway (starlette's TestClient is an httpx.Client)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from sparsegate.backends.sim import SimConfig, SimState
from sparsegate.backends.sim import create_app as create_sim
from sparsegate.gateway.admin.cli import run_admin
from sparsegate.gateway.app import create_app
from sparsegate.gateway.cli import build_parser
from tests.gateway.admin.support import ACME_KEY, ADMIN_KEY, MODEL, bearer, settings


@pytest.fixture
def client() -> Iterator[TestClient]:
    sim = SimState.build(SimConfig(model=MODEL, ttft_base_ms=0.0, itl_ms=0.0))
    app = create_app(settings(), transport=httpx.ASGITransport(app=create_sim(sim.config, state=sim)))
    with TestClient(app, headers=bearer(ADMIN_KEY)) as test_client:
        yield test_client


def admin(client: TestClient, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_admin(build_parser().parse_args(["admin", *argv]), client, out, err)
    return code, out.getvalue(), err.getvalue()


def test_cli_creates_a_tenant_and_a_key_then_revokes_it(client: TestClient) -> None:
    code, out, _ = admin(client, "tenants", "set", "beta", "--models", MODEL, "--rpm", "5", "--tokens-per-day", "900")
    assert code == 0
    assert json.loads(out)["limits"]["rpm"] == 5 and json.loads(out)["budgets"]["tokens_per_day"] == 900

    code, out, _ = admin(client, "keys", "create", "beta", "--tokens-per-month", "100")
    issued = json.loads(out)
    assert code == 0 and issued["budgets"]["tokens_per_month"] == 100
    assert client.get("/v1/models", headers=bearer(issued["key"])).status_code == 200

    code, out, _ = admin(client, "keys", "list", "beta")
    assert [k["id"] for k in json.loads(out)["data"]] == [issued["id"]]

    code, out, _ = admin(client, "keys", "rotate", issued["id"], "--overlap-s", "0")
    rotated = json.loads(out)
    assert code == 0 and rotated["replaces"] == issued["id"]
    assert client.get("/v1/models", headers=bearer(issued["key"])).status_code == 401

    code, _, _ = admin(client, "keys", "revoke", rotated["id"])
    assert code == 0
    assert client.get("/v1/models", headers=bearer(rotated["key"])).status_code == 401

    code, out, _ = admin(client, "tenants", "list")
    assert [t["name"] for t in json.loads(out)["data"]] == ["acme", "beta"]


def test_cli_reports_the_gateway_error_and_exits_non_zero(client: TestClient) -> None:
    code, out, err = admin(client, "keys", "revoke", "key-nope")
    assert code == 1 and out == ""
    assert "404" in err and "key-nope" in err


def test_cli_exports_usage_as_jsonl_and_csv(client: TestClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=body, headers=bearer(ACME_KEY)).status_code == 200
    code, out, _ = admin(client, "usage", "--tenant", "acme", "--since", "2000-01-01")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2 and all(r["tenant"] == "acme" for r in rows)
    code, out, _ = admin(client, "usage", "--tenant", "acme", "--csv")
    assert code == 0 and out.splitlines()[0].startswith("uid,request_id,ts,tenant")
    assert len(out.splitlines()) == 3
    code, out, err = admin(client, "usage", "--until", "not-a-time")
    assert code == 1 and "until" in err
