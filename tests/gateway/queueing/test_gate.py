"""The gate in process: slots at once while a pool has room, fair waits when it has none, and honest give-ups."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from sparsegate.gateway.breaker import CircuitBreaker
from sparsegate.gateway.errors import QueueFull, QueueTimeout
from sparsegate.gateway.overload import LoopMonitor
from sparsegate.gateway.queueing import FairGate, QueueMetrics
from sparsegate.gateway.queueing.capacity import WorkerLoad
from sparsegate.gateway.routing import Worker
from sparsegate.gateway.settings import FairShareSettings


def worker(url: str = "http://w0", pool: str = "p") -> Worker:
    return Worker(url, pool, CircuitBreaker(3, 10.0))


def loads_handler(by_host: dict[str, dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        entry = by_host[request.url.host]
        if request.url.path == "/v1/loads":
            return httpx.Response(200, json={"loads": [entry["load"]]})
        if request.url.path == "/get_server_info":
            return httpx.Response(200, json=entry.get("info", {}))
        return httpx.Response(404)

    return httpx.MockTransport(handle)


def make_gate(
    workers: list[Worker] | None = None, transport: httpx.MockTransport | None = None, **settings: Any
) -> tuple[FairGate, QueueMetrics, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=transport or loads_handler({}))
    metrics = QueueMetrics(CollectorRegistry())
    members = workers if workers is not None else [worker()]
    gate = FairGate(FairShareSettings(**settings), lambda: members, http, LoopMonitor(), metrics=metrics)
    return gate, metrics, http


def full(gate: FairGate, limit: int, pool: str = "p") -> None:
    gate.apply(gate.pool(pool), [WorkerLoad(0, 0, limit)], 0)


async def settle_tasks() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_unknown_capacity_never_holds_a_request_back() -> None:
    gate, _, _ = make_gate()
    tickets = [gate.try_take("p", "a") for _ in range(100)]
    assert all(t is not None for t in tickets)
    gate.apply(gate.pool("p"), [WorkerLoad(3, 0, None)], 0)  # a worker that does not say its maximum
    assert gate.try_take("p", "a") is not None


async def test_a_lone_tenant_uses_every_slot_then_waits_its_turn() -> None:
    gate, _, _ = make_gate()
    full(gate, 4)
    tickets = [gate.try_take("p", "a") for _ in range(4)]
    assert all(t is not None for t in tickets) and gate.try_take("p", "a") is None
    waiting = asyncio.create_task(gate.wait("p", "a", tier=0, weight=1.0, budget_s=60))
    await settle_tasks()
    assert not waiting.done() and gate.saturation()["p"] == {"limit": 4, "in_use": 4, "queued": 1, "saturated": True}
    first = tickets[0]
    assert first is not None
    gate.release(first)
    gate.release(first)  # a second release gives back nothing
    ticket = await waiting
    assert ticket.tenant == "a" and gate.pool("p").scheduler.held("a") == 4


async def test_a_light_tenant_overtakes_the_heavy_tenants_backlog() -> None:
    gate, _, _ = make_gate()
    full(gate, 2)
    held = [gate.try_take("p", "heavy") for _ in range(2)]
    heavy = [asyncio.create_task(gate.wait("p", "heavy", tier=0, weight=1.0, budget_s=60)) for _ in range(5)]
    await settle_tasks()
    light = asyncio.create_task(gate.wait("p", "light", tier=0, weight=1.0, budget_s=60))
    await settle_tasks()
    ticket = held[0]
    assert ticket is not None
    gate.release(ticket)
    await settle_tasks()
    assert light.done() and not any(t.done() for t in heavy)
    assert light.result().queued_s >= 0
    for task in heavy:
        task.cancel()
    await asyncio.gather(*heavy, return_exceptions=True)
    assert gate.pool("p").scheduler.queued == 0


async def test_a_cancelled_wait_leaves_the_queue_and_holds_nothing() -> None:
    gate, metrics, _ = make_gate()
    full(gate, 1)
    first = gate.try_take("p", "a")
    assert first is not None
    gone = asyncio.create_task(gate.wait("p", "a", tier=0, weight=1.0, budget_s=60))
    stays = asyncio.create_task(gate.wait("p", "a", tier=0, weight=1.0, budget_s=60))
    await settle_tasks()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gate.pool("p").scheduler.queued == 1
    gate.release(first)
    assert (await stays).tenant == "a"
    assert gate.pool("p").scheduler.held("a") == 1, "only the waiter that stayed holds a slot"
    assert metrics.depth.labels("p", "a")._value.get() == 0
    samples = {s.labels["outcome"]: s.value for s in metrics.wait.collect()[0].samples if s.name.endswith("_count")}
    assert samples == {"cancelled": 1.0, "granted": 1.0}


async def test_granted_then_cancelled_gives_the_slot_on() -> None:
    gate, _, _ = make_gate()
    full(gate, 1)
    first = gate.try_take("p", "a")
    assert first is not None
    racer = asyncio.create_task(gate.wait("p", "a", tier=0, weight=1.0, budget_s=60))
    other = asyncio.create_task(gate.wait("p", "a", tier=0, weight=1.0, budget_s=60))
    await settle_tasks()
    gate.release(first)  # the slot goes to the first waiter ...
    racer.cancel()  # ... which is cancelled before it could run
    await asyncio.gather(racer, return_exceptions=True)
    assert (await other).tenant == "a", "the slot the first waiter could not use went on"
    assert gate.pool("p").scheduler.held("a") == 1


async def test_a_tenant_with_nothing_here_gets_one_request_onto_a_full_pool() -> None:
    gate, _, _ = make_gate()
    full(gate, 2)
    assert gate.try_take("p", "a") is not None and gate.try_take("p", "a") is not None
    first_b = await gate.wait("p", "b", tier=0, weight=1.0, budget_s=60)
    assert first_b.queued_s >= 0 and gate.saturation()["p"]["in_use"] == 3, "one beyond the limit, for b"
    second_b = asyncio.create_task(gate.wait("p", "b", tier=0, weight=1.0, budget_s=60))
    more_a = asyncio.create_task(gate.wait("p", "a", tier=0, weight=1.0, budget_s=60))
    await settle_tasks()
    assert not second_b.done() and not more_a.done(), "b holds a slot now: no more overflow"
    gate.release(first_b)
    await settle_tasks()
    assert second_b.done() and not more_a.done(), "b's slot went back to b, which held nothing again"
    assert gate.saturation()["p"]["in_use"] == 3
    more_a.cancel()
    await asyncio.gather(more_a, return_exceptions=True)


async def test_a_passed_queue_deadline_is_a_503_with_retry_after() -> None:
    gate, metrics, _ = make_gate()
    full(gate, 1)
    assert gate.try_take("p", "a") is not None
    with pytest.raises(QueueTimeout) as caught:
        await gate.wait("p", "a", tier=0, weight=1.0, budget_s=0.0)
    assert caught.value.status_code == 503 and "retry-after" in caught.value.headers()
    assert gate.pool("p").scheduler.queued == 0 and gate.pool("p").scheduler.held("a") == 1
    samples = {s.labels["outcome"] for s in metrics.wait.collect()[0].samples if s.name.endswith("_count")}
    assert samples == {"timeout"}


async def test_a_tenants_queue_is_bounded_with_a_429() -> None:
    gate, metrics, _ = make_gate(max_queued_per_tenant=1)
    full(gate, 1)
    assert gate.try_take("p", "a") is not None
    waiting = asyncio.create_task(gate.wait("p", "a", tier=0, weight=1.0, budget_s=60))
    await settle_tasks()
    with pytest.raises(QueueFull) as caught:
        await gate.wait("p", "a", tier=0, weight=1.0, budget_s=60)
    assert caught.value.status_code == 429 and caught.value.headers()["retry-after"] == "1"
    assert metrics.refused.labels("p", "a", "full")._value.get() == 1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_off_means_never_held_back() -> None:
    gate, _, _ = make_gate(enabled=False)
    full(gate, 1)
    tickets = [gate.try_take("p", "a") for _ in range(3)]
    assert all(t is not None and not t.held for t in tickets)


async def test_polls_read_limits_and_other_replicas_load() -> None:
    workers = [worker("http://w0"), worker("http://w1")]
    hosts = {
        "w0": {"load": {"num_running_reqs": 8, "num_waiting_reqs": 2, "max_running_requests": 8}},
        "w1": {"load": {"num_running_reqs": 1, "num_waiting_reqs": 0}, "info": {"max_running_requests": 4}},
    }
    gate, _, http = make_gate(workers, loads_handler(hosts), headroom=1)
    async with http:
        for _ in range(3):
            assert gate.try_take("p", "a") is not None
        await gate.poll()
        pool = gate.pool("p")
        assert pool.limit == 8 + 4 + 2, "max running over both workers, plus headroom for each"
        assert pool.others == 11 - 3, "what the workers hold beyond our own three"
        assert pool.free() == 14 - 11
        workers[1].breaker.record_failure()
        for _ in range(3):
            workers[1].breaker.record_failure()
        await gate.poll()
        assert pool.limit == 9, "a worker that is down offers no slots"
        workers[0].breaker.record_failure()
        for _ in range(3):
            workers[0].breaker.record_failure()
        await gate.poll()
        assert pool.limit is None and gate.try_take("p", "a") is not None, "no worker: the router answers 503"
