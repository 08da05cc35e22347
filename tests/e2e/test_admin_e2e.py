"""Two gateway processes on one Redis: keys and budgets set through the admin API hold on both replicas."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sparsegate.gateway.settings import hash_api_key
from tests.e2e.harness import ADMIN_KEY, KEY_ACME, MODEL, Gateway, Sim, tenant, wait_until
from tests.redis_server import RedisServer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROMPT = list(range(100, 120))  # token ids: the gateway and the worker both count exactly 20
MAX_TOKENS = 5
COST = len(PROMPT) + MAX_TOKENS  # reserved at admission and used in full (ignore_eos): no refund, exact math


@dataclass
class Replicas:
    gateways: list[Gateway]
    sim: Sim


def config(sim: Sim, redis_url: str) -> dict[str, Any]:
    return {
        "tenants": [tenant("acme", KEY_ACME)],
        "pools": [{"name": "main", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
        "redis_url": redis_url,
        # Exactness runs on a healthy Redis; a 200-request burst on a 2-core box must not hit the 50 ms deadline.
        "limiter": {"key_prefix": f"e2e{uuid.uuid4().hex[:6]}", "socket_timeout_s": 2.0, "connect_timeout_s": 2.0},
        "admin": {"api_keys": [hash_api_key(ADMIN_KEY)]},
        "health": {"failure_threshold": 1000},
    }


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    workdir: Path = tmp_path_factory.mktemp("admin")
    with RedisServer() as redis:
        sim = Sim(model=MODEL, max_context=32_768, args=["--itl-ms", "1"], workdir=workdir).start()
        cfg = config(sim, redis.url)
        gateways = [Gateway(config=cfg, workdir=workdir).start() for _ in range(2)]
        try:
            yield Replicas(gateways, sim)
        finally:
            for gw in gateways:
                gw.stop()
            sim.stop()


def complete(gw: Gateway, key: str, http: httpx.Client | None = None) -> httpx.Response:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {key}"}
    if http is not None:
        return http.post(gw.url + "/v1/completions", json=body, headers=headers)
    return httpx.post(gw.url + "/v1/completions", json=body, headers=headers, timeout=30)


def models(gw: Gateway, key: str) -> int:
    return httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_key_made_on_one_replica_works_on_the_other_and_its_revocation_reaches_it_within_1s(
    replicas: Replicas,
) -> None:
    one, two = replicas.gateways
    issued = httpx.post(one.url + "/admin/v1/tenants/acme/keys", headers=ADMIN).json()
    assert wait_until(lambda: models(two, issued["key"]) == 200, timeout=1.0)
    assert complete(two, issued["key"]).status_code == 200

    revoked = httpx.delete(f"{two.url}/admin/v1/keys/{issued['id']}", headers=ADMIN)
    assert revoked.status_code == 200
    # The bound: every replica refuses a revoked key within a second (each polls every 0.25 s).
    assert wait_until(lambda: models(one, issued["key"]) == 401, timeout=1.0, interval=0.02)
    assert complete(one, issued["key"]).status_code == 401


def test_a_budget_runs_out_exactly_under_200_concurrent_requests_on_two_replicas(replicas: Replicas) -> None:
    one, two = replicas.gateways
    allowed = 37
    body = {"name": "budgeted", "models": [MODEL], "budgets": {"tokens_per_day": allowed * COST + COST - 1}}
    assert httpx.post(one.url + "/admin/v1/tenants", json=body, headers=ADMIN).status_code == 200
    key = httpx.post(one.url + "/admin/v1/tenants/budgeted/keys", headers=ADMIN).json()["key"]
    assert wait_until(lambda: models(two, key) == 200, timeout=1.0)

    def attempt(i: int, http: httpx.Client) -> int:
        while True:  # a client retries a 503 (never sent here on a healthy Redis, but it would be retriable)
            status = complete((one, two)[i % 2], key, http).status_code
            if status != 503:
                return status

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=200)) as http, ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda i: attempt(i, http), range(200)))
    assert statuses.count(200) == allowed
    assert statuses.count(429) == 200 - allowed
    refused = complete(one, key)
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota" and refused.headers["x-should-retry"] == "false"
    assert f"Limit {allowed * COST + COST - 1}, Used {allowed * COST}" in error["message"]
