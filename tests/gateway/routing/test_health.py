"""Active probes, load polling, and a worker taken out and brought back, against an httpx.MockTransport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from sparsegate.gateway.breaker import CircuitBreaker
from sparsegate.gateway.routing import Router
from sparsegate.gateway.routing.health import HealthMonitor
from sparsegate.gateway.routing.workers import Worker
from sparsegate.gateway.settings import HealthSettings

from .factories import make_settings, pool

METRICS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="glm",dp_rank="0"} 3.0
sglang:num_running_reqs{model_name="glm",dp_rank="1"} 2.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="glm",dp_rank="0"} 4.0
"""


class FakeCluster:
    """Workers by host name: up or down, with a load figure on `/v1/loads` (0.5.23) or, for hosts in
    `old`, on `/get_load`; hosts in `metrics_only` serve neither."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.loads: dict[str, int] = {}
        self.old: set[str] = set()
        self.metrics_only: set[str] = set()
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls.append(f"{host}{request.url.path}")
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health_generate":
            return httpx.Response(200)
        n = self.loads.get(host, 0)
        if request.url.path == "/v1/loads" and host not in self.old | self.metrics_only:
            return httpx.Response(200, json={"loads": [{"dp_rank": 0, "num_running_reqs": n, "num_waiting_reqs": 0}]})
        if request.url.path == "/get_load" and host in self.old:
            return httpx.Response(200, json=[{"dp_rank": 0, "num_reqs": n, "num_waiting_reqs": 0, "num_tokens": 9}])
        if request.url.path == "/metrics":
            return httpx.Response(200, text=METRICS)
        return httpx.Response(404)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
async def http(cluster: FakeCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(cluster.handler)) as client:
        yield client


async def wait_for(condition: Callable[[], bool], within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_probe_results_drive_the_breaker(http: httpx.AsyncClient, cluster: FakeCluster) -> None:
    monitor = HealthMonitor(http, HealthSettings(failure_threshold=2))
    w = Worker("http://w1:30000", "p", CircuitBreaker(2, 10.0))
    assert await monitor.probe(w)
    cluster.down.add("w1")
    assert not await monitor.probe(w)
    assert w.state == "closed"
    assert not await monitor.probe(w)
    assert w.state == "open"
    assert cluster.calls.count("w1/health_generate") == 3


async def test_probe_non_200_is_a_failure(cluster: FakeCluster) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(503))) as http:
        monitor = HealthMonitor(http, HealthSettings())
        w = Worker("http://w1:30000", "p", CircuitBreaker(1, 10.0))
        assert not await monitor.probe(w)
        assert w.state == "open"


async def test_load_poll_uses_v1_loads_then_older_endpoints(http: httpx.AsyncClient, cluster: FakeCluster) -> None:
    monitor = HealthMonitor(http, HealthSettings())
    a, b, c = (Worker(f"http://{h}:1", "p", CircuitBreaker(2, 10.0)) for h in "abc")
    cluster.loads.update({"a": 6, "b": 5})
    cluster.old.add("b")
    cluster.metrics_only.add("c")
    assert await monitor.poll_load(a) == 6
    assert a.load == 6
    assert await monitor.poll_load(b) == 5
    assert await monitor.poll_load(c) == 9
    assert await monitor.poll_load(c) == 9
    assert cluster.calls.count("c/v1/loads") == 1  # remembered: straight to /metrics the second time
    assert cluster.calls.count("c/get_load") == 1
    cluster.down.add("a")
    assert await monitor.poll_load(a) is None
    assert a.polled_load is None and a.load == 0


async def test_killed_worker_is_taken_out_and_comes_back(http: httpx.AsyncClient, cluster: FakeCluster) -> None:
    settings = make_settings(
        pools=[pool("p", "glm", 8192, ["http://a:1", "http://b:1"], policy="least_outstanding")],
        health={"probe_interval_s": 0.01, "probe_timeout_s": 0.5, "failure_threshold": 2, "open_s": 0.1},
    )
    router = Router(settings, http)
    await router.start()
    try:
        b = next(w for w in router.workers() if w.url == "http://b:1")
        await wait_for(lambda: cluster.calls.count("b/health_generate") >= 2)
        assert router.readiness() == {"p": {"healthy": 2, "total": 2}}

        cluster.down.add("b")
        await wait_for(lambda: b.state == "open")
        assert router.readiness() == {"p": {"healthy": 1, "total": 2}}
        assert all(router.pick_worker("p", "k").url == "http://a:1" for _ in range(10))
        probes_when_opened = cluster.calls.count("b/health_generate")
        await asyncio.sleep(0.05)
        assert cluster.calls.count("b/health_generate") == probes_when_opened  # no probing while open

        cluster.down.discard("b")
        await wait_for(lambda: b.state == "closed")
        assert router.readiness() == {"p": {"healthy": 2, "total": 2}}
    finally:
        await router.close()


async def test_load_polling_feeds_worker_load(http: httpx.AsyncClient, cluster: FakeCluster) -> None:
    settings = make_settings(
        pools=[pool("p", "glm", 8192, ["http://a:1", "http://b:1"], policy="power_of_two")],
        health={"probe_interval_s": 10.0, "load_poll_s": 0.01},
    )
    cluster.loads.update({"a": 12, "b": 1})
    router = Router(settings, http)
    await router.start()
    try:
        await wait_for(lambda: all(w.polled_load is not None for w in router.workers()))
        assert {w.url: w.load for w in router.workers()} == {"http://a:1": 12, "http://b:1": 1}
        assert all(router.pick_worker("p", "k").url == "http://b:1" for _ in range(5))
    finally:
        await router.close()


async def test_reload_starts_and_stops_watching(http: httpx.AsyncClient, cluster: FakeCluster) -> None:
    health = {"probe_interval_s": 0.01, "load_poll_s": 0.01}
    router = Router(make_settings(pools=[pool("p", "glm", 8192, ["http://a:1"])], health=health), http)
    await router.start()
    try:
        await wait_for(lambda: "a/health_generate" in cluster.calls)
        router.reload(make_settings(pools=[pool("p", "glm", 8192, ["http://b:1"])], health=health))
        await wait_for(lambda: "b/health_generate" in cluster.calls)
        await asyncio.sleep(0.02)
        seen = cluster.calls.count("a/health_generate")
        await asyncio.sleep(0.05)
        assert cluster.calls.count("a/health_generate") == seen
    finally:
        await router.close()
