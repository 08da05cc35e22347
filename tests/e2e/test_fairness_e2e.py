"""Fair share of a saturated pool, end to end: simulated SGLang workers and gateways as processes.

Nothing here asserts a time: orders of arrival, counts of completions, queue depths and status codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.e2e.harness import KEY_ACME, KEY_BETA, MODEL, Gateway, Sim, tenant

FAST_POLL = {"poll_s": 0.05}


def config(
    sim: Sim, *, acme: dict[str, Any] | None = None, beta: dict[str, Any] | None = None, **fair: Any
) -> dict[str, Any]:
    return {
        "tenants": [tenant("acme", KEY_ACME, **(acme or {})), tenant("beta", KEY_BETA, **(beta or {}))],
        "pools": [{"name": "p", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
        "fair_share": {**FAST_POLL, **fair},
        "health": {"load_poll_s": 0.2},
    }


def body(tokens: int, stream: bool = True) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": tokens,
        "stream": stream,
        "ignore_eos": True,
    }


async def saturation(gw: Gateway) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        pools: dict[str, Any] = (await client.get(gw.url + "/health/ready")).json()["saturation"]
    return pools.get("p", {"limit": None, "in_use": 0, "queued": 0, "saturated": False})


async def worker_load(sim: Sim) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        load: dict[str, Any] = (await client.get(sim.url + "/v1/loads")).json()["loads"][0]
    return load


async def stream(client: httpx.AsyncClient, gw: Gateway, key: str, tokens: int) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", gw.url + "/v1/chat/completions", json=body(tokens), headers=headers) as resp:
        await resp.aread()
        return resp.status_code


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 20.0) -> bool:
    """Poll `check` until it holds (or `within_s` passed); the processes move on their own meanwhile."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()


def limit_is(gw: Gateway, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await saturation(gw))["limit"] == n

    return check


def field_is(gw: Gateway, name: str, n: int, *, at_least: bool = False) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        value = (await saturation(gw))[name]
        return bool(value >= n if at_least else value == n)

    return check


async def test_a_light_tenant_overtakes_a_heavy_tenants_backlog(
    sims: Callable[..., Sim], gateways: Callable[..., Gateway]
) -> None:
    sim = sims(args=["--max-running", "2", "--itl-ms", "20"])
    gw = gateways(config(sim))
    assert await eventually(limit_is(gw, 2))
    finished: list[str] = []

    async def one(name: str, key: str, tokens: int) -> None:
        assert await stream(client, gw, key, tokens) == 200
        finished.append(name)

    async with httpx.AsyncClient(timeout=60) as client:
        heavy = [asyncio.create_task(one("heavy", KEY_ACME, 60)) for _ in range(8)]
        assert await eventually(field_is(gw, "queued", 6)), "two run, six wait in the gateway"
        assert (await worker_load(sim))["num_waiting_reqs"] == 0
        light = asyncio.create_task(one("light", KEY_BETA, 5))
        await asyncio.gather(light, *heavy)
    position = finished.index("light")
    # The light request waited for one of the two running heavy requests at most (plus one that may have been
    # handed the slot in the same instant), never behind the six heavy ones that were queued before it.
    assert position <= 3, finished


async def test_weights_split_a_contended_pool_in_proportion(
    sims: Callable[..., Sim], gateways: Callable[..., Gateway]
) -> None:
    sim = sims(args=["--max-running", "4", "--itl-ms", "10"])
    gw = gateways(config(sim, acme={"weight": 3}, beta={"weight": 1}))
    assert await eventually(limit_is(gw, 4))
    done: dict[str, int] = {"acme": 0, "beta": 0}
    counting = False
    stop = asyncio.Event()

    async def flood(name: str, key: str) -> None:
        while not stop.is_set():
            assert await stream(client, gw, key, 20) == 200
            if counting:
                done[name] += 1

    async with httpx.AsyncClient(timeout=60) as client:
        tasks = [
            asyncio.create_task(flood(n, k)) for n, k in (("acme", KEY_ACME), ("beta", KEY_BETA)) for _ in range(8)
        ]
        assert await eventually(field_is(gw, "queued", 8, at_least=True)), "both tenants have a backlog"
        counting = True

        async def enough() -> bool:
            return done["acme"] + done["beta"] >= 80

        assert await eventually(enough, within_s=60)
        counting = False
        stop.set()
        await asyncio.gather(*tasks)
    share = done["acme"] / (done["acme"] + done["beta"])
    assert 0.62 <= share <= 0.88, f"weight 3 against 1 should get ~3/4 of the slots: {done}"


async def test_a_disconnect_leaves_the_queue(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    sim = sims(args=["--max-running", "1", "--itl-ms", "20"])
    gw = gateways(config(sim))
    assert await eventually(limit_is(gw, 1))
    async with httpx.AsyncClient(timeout=60) as client:
        holder = asyncio.create_task(stream(client, gw, KEY_ACME, 150))
        assert await eventually(field_is(gw, "in_use", 1))
        async with httpx.AsyncClient(timeout=60) as leaver:
            # the same tenant: one holding nothing could send a request on into the worker's queue
            waiting = asyncio.create_task(stream(leaver, gw, KEY_ACME, 5))
            assert await eventually(field_is(gw, "queued", 1))
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        # the closed connection takes the request out of the queue while the holder still runs
        assert await eventually(field_is(gw, "queued", 0))
        assert not holder.done()
        assert await holder == 200
    assert sim.stats()["received"] == 1, "the request that left never reached the worker"


async def test_a_passed_queue_deadline_sheds_with_503(
    sims: Callable[..., Sim], gateways: Callable[..., Gateway]
) -> None:
    sim = sims(args=["--max-running", "1", "--itl-ms", "20"])
    gw = gateways(config(sim, max_wait_s=0.2))
    assert await eventually(limit_is(gw, 1))
    async with httpx.AsyncClient(timeout=60) as client:
        holder = asyncio.create_task(stream(client, gw, KEY_ACME, 100))
        assert await eventually(field_is(gw, "in_use", 1))
        headers = {"Authorization": f"Bearer {KEY_ACME}"}  # a tenant that holds nothing would get onto the worker
        resp = await client.post(gw.url + "/v1/chat/completions", json=body(5, stream=False), headers=headers)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["type"] == "server_error"
        assert int(resp.headers["retry-after"]) >= 1 and int(resp.headers["retry-after-ms"]) >= 1
        assert await holder == 200
    assert sim.stats()["received"] == 1, "the shed request never reached the worker"


async def test_one_tenant_alone_uses_every_slot(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    sim = sims(args=["--max-running", "4", "--itl-ms", "20"])
    gw = gateways(config(sim))
    assert await eventually(limit_is(gw, 4))
    async with httpx.AsyncClient(timeout=60) as client:
        tasks = [asyncio.create_task(stream(client, gw, KEY_ACME, 40)) for _ in range(10)]
        running, queued, waiting = set(), set(), set()
        while not all(task.done() for task in tasks):
            load = await worker_load(sim)
            running.add(load["num_running_reqs"])
            waiting.add(load["num_waiting_reqs"])
            queued.add((await saturation(gw))["queued"])
            await asyncio.sleep(0.02)
        assert [task.result() for task in tasks] == [200] * 10
    assert max(running) == 4, "every slot of the worker was used"
    assert max(queued) >= 5, "the rest waited in the gateway"
    assert max(waiting) <= 1, "not on the worker (where only a health probe may wait a moment)"
