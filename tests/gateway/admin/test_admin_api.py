"""The admin API in process: auth, tenants, keys (create, list, revoke, rotate), persistence to the state file."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from sparsegate.gateway.admin.model import seed_key_id
from sparsegate.gateway.settings import hash_api_key
from tests.gateway.admin.support import ACME_KEY, ADMIN_KEY, MODEL, bearer, running, settings

ADMIN = bearer(ADMIN_KEY)


async def _models(client: httpx.AsyncClient, key: str) -> int:
    return (await client.get("/v1/models", headers=bearer(key))).status_code


async def test_admin_routes_need_an_admin_key() -> None:
    async with running(settings()) as (_, client):
        for headers in ({}, bearer(ACME_KEY), bearer("sk-wrong-0123456789")):
            response = await client.get("/admin/v1/tenants", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert (await client.get("/admin/v1/tenants", headers=ADMIN)).status_code == 200


async def test_a_tenant_created_at_runtime_gets_a_key_that_works_at_once() -> None:
    async with running(settings()) as (_, client):
        body = {"name": "beta", "models": [MODEL], "limits": {"rpm": 10}, "budgets": {"tokens_per_day": 1000}}
        created = await client.post("/admin/v1/tenants", json=body, headers=ADMIN)
        assert created.status_code == 200, created.text
        assert created.json()["source"] == "api"
        assert created.json()["budgets"] == {"tokens_per_day": 1000, "tokens_per_month": None}

        answer = (await client.post("/admin/v1/tenants/beta/keys", headers=ADMIN)).json()
        assert set(answer) >= {"id", "key", "prefix", "created"}
        assert answer["key"].startswith(answer["prefix"])
        assert await _models(client, answer["key"]) == 200

        listing = (await client.get("/admin/v1/tenants/beta/keys", headers=ADMIN)).json()["data"]
        assert [k["id"] for k in listing] == [answer["id"]]
        assert "key" not in listing[0] and "hash" not in listing[0]
        names = [t["name"] for t in (await client.get("/admin/v1/tenants", headers=ADMIN)).json()["data"]]
        assert names == ["acme", "beta"]


async def test_the_api_overrides_the_seed_and_keeps_its_keys() -> None:
    async with running(settings()) as (_, client):
        response = await client.post("/admin/v1/tenants", json={"name": "acme", "models": ["other"]}, headers=ADMIN)
        assert response.json()["source"] == "config+api"
        assert (await client.get("/v1/models", headers=bearer(ACME_KEY))).json()["data"] == []
        seed_id = seed_key_id(hash_api_key(ACME_KEY))
        listing = (await client.get("/admin/v1/tenants/acme/keys", headers=ADMIN)).json()["data"]
        assert [k["id"] for k in listing] == [seed_id]


async def test_revoking_a_key_refuses_it_and_a_seed_key_can_be_revoked_too() -> None:
    async with running(settings()) as (_, client):
        issued = (await client.post("/admin/v1/tenants/acme/keys", headers=ADMIN)).json()
        assert (await client.delete(f"/admin/v1/keys/{issued['id']}", headers=ADMIN)).json()["revoked"] is True
        assert await _models(client, issued["key"]) == 401
        assert (await client.delete(f"/admin/v1/keys/{issued['id']}", headers=ADMIN)).status_code == 404

        assert await _models(client, ACME_KEY) == 200
        seed_id = seed_key_id(hash_api_key(ACME_KEY))
        assert (await client.delete(f"/admin/v1/keys/{seed_id}", headers=ADMIN)).status_code == 200
        assert await _models(client, ACME_KEY) == 401
        assert (await client.get("/admin/v1/tenants/acme/keys", headers=ADMIN)).json()["data"] == []


async def test_rotation_gives_a_new_key_and_the_old_one_ends_after_the_overlap() -> None:
    async with running(settings()) as (app, client):
        now = [1_000_000.0]
        app.state.admin.clock = lambda: now[0]
        app.state.gateway.keys._clock = lambda: now[0]
        old = (await client.post("/admin/v1/tenants/acme/keys", headers=ADMIN)).json()
        rotated = await client.post(f"/admin/v1/keys/{old['id']}/rotate", json={"overlap_s": 60}, headers=ADMIN)
        new = rotated.json()
        assert new["replaces"] == old["id"] and new["old_key_expires_at"] == 1_000_060
        assert await _models(client, old["key"]) == 200
        assert await _models(client, new["key"]) == 200
        now[0] += 61
        assert await _models(client, old["key"]) == 401
        assert await _models(client, new["key"]) == 200


async def test_unknown_tenant_and_bad_bodies_are_clear_4xx() -> None:
    async with running(settings()) as (_, client):
        missing = await client.post("/admin/v1/tenants/nobody/keys", headers=ADMIN)
        assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]
        bad = await client.post("/admin/v1/tenants", json={"name": "x y", "models": []}, headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        neg = await client.post(
            "/admin/v1/tenants", json={"name": "x", "models": ["m"], "budgets": {"tokens_per_day": 0}}, headers=ADMIN
        )
        assert neg.status_code == 400


async def test_without_redis_the_state_survives_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "admin-state.json"
    config = settings(admin={"api_keys": [hash_api_key(ADMIN_KEY)], "state_file": str(state_file)})
    async with running(config) as (_, client):
        await client.post("/admin/v1/tenants", json={"name": "beta", "models": [MODEL]}, headers=ADMIN)
        issued = (await client.post("/admin/v1/tenants/beta/keys", headers=ADMIN)).json()
    stored = state_file.read_text()
    assert issued["key"] not in stored and hash_api_key(issued["key"]) in stored
    assert not [p for p in tmp_path.iterdir() if p.name != state_file.name]  # noqa: ASYNC240  # no temporary file left behind
    async with running(config) as (_, client):
        assert await _models(client, issued["key"]) == 200
        assert json.loads(stored)["version"] == 2


async def test_openapi_documents_the_admin_routes_with_their_auth() -> None:
    async with running(settings()) as (_, client):
        schema = (await client.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["AdminKey"]["scheme"] == "bearer"
        expected = {
            ("post", "/admin/v1/tenants"),
            ("get", "/admin/v1/tenants"),
            ("post", "/admin/v1/tenants/{name}/keys"),
            ("get", "/admin/v1/tenants/{name}/keys"),
            ("delete", "/admin/v1/keys/{key_id}"),
            ("post", "/admin/v1/keys/{key_id}/rotate"),
        }
        for method, path in expected:
            assert schema["paths"][path][method]["security"] == [{"AdminKey": []}], (method, path)
