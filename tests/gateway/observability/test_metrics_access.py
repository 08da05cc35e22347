"""What tenants can see: /metrics needs an admin key on the API port, or lives on its own port; labels stay bounded."""

from __future__ import annotations

import httpx

from sparsegate.gateway.defaults import free_port
from tests.gateway.admin.support import ACME_KEY, ADMIN_KEY, MODEL, WORKER, bearer, running, settings


async def test_metrics_on_the_api_port_tell_an_anonymous_or_tenant_caller_nothing() -> None:
    async with running(settings()) as (_, client):
        await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                          "max_tokens": 2}, headers=bearer(ACME_KEY))  # fmt: skip
        for headers in ({}, bearer(ACME_KEY)):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert "acme" not in refused.text and "sim-1" not in refused.text and "sparsegate_" not in refused.text
        allowed = await client.get("/metrics", headers=bearer(ADMIN_KEY))
        assert allowed.status_code == 200 and 'tenant="acme"' in allowed.text


async def test_metrics_port_serves_the_same_registry_without_auth() -> None:
    port = free_port()
    async with running(settings(metrics_port=port, metrics_host="127.0.0.1")) as (_, client):
        await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                          "max_tokens": 2}, headers=bearer(ACME_KEY))  # fmt: skip
        async with httpx.AsyncClient() as scraper:
            text = (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'sparsegate_requests_total{endpoint="chat",model="glm-5.1",pool="p",status="200",tenant="acme"}' in text
        assert WORKER in text  # the breaker gauge: internal, which is why this port must stay internal


async def test_a_made_up_model_name_creates_no_series() -> None:
    async with running(settings()) as (_, client):
        for i in range(5):
            body = {"model": f"made-up-{i}", "messages": [{"role": "user", "content": "x"}]}
            response = await client.post("/v1/chat/completions", json=body, headers=bearer(ACME_KEY))
            assert response.status_code == 404
        text = (await client.get("/metrics", headers=bearer(ADMIN_KEY))).text
        assert "made-up" not in text
        assert 'model="none",pool="none",status="404",tenant="acme"} 5.0' in text
