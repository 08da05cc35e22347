"""Where stored responses live: per tenant, with a TTL, bounded in memory, shared through Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from sparsegate.gateway.responses_store import MemoryResponseStore, RedisResponseStore, ResponseLocation
from tests.redis_server import RedisServer

HERE = ResponseLocation(pool="short", worker="http://w1")
THERE = ResponseLocation(pool="long", worker="http://w2")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


async def test_memory_store_is_per_tenant_and_expires() -> None:
    clock = FakeClock()
    store = MemoryResponseStore(ttl_s=10, max_entries=100, clock=clock)
    await store.remember("acme", "resp_1", HERE)
    assert await store.locate("acme", "resp_1") == HERE
    assert await store.locate("globex", "resp_1") is None  # another tenant never finds it
    clock.now += 9.9
    assert await store.locate("acme", "resp_1") == HERE
    clock.now += 0.2
    assert await store.locate("acme", "resp_1") is None
    assert len(store) == 0


async def test_memory_store_drops_the_oldest_past_its_bound() -> None:
    store = MemoryResponseStore(ttl_s=60, max_entries=2)
    for n in range(3):
        await store.remember("acme", f"resp_{n}", HERE)
    assert await store.locate("acme", "resp_0") is None
    assert await store.locate("acme", "resp_2") == HERE
    assert len(store) == 2


def redis_store(url: str, *, prefix: str, ttl_s: float = 60) -> RedisResponseStore:
    fallback = MemoryResponseStore(ttl_s=ttl_s, max_entries=100)
    return RedisResponseStore(Redis.from_url(url), prefix=prefix, ttl_s=ttl_s, deadline_s=1.0, fallback=fallback)


async def test_redis_store_is_shared_between_replicas_per_tenant(redis_url: str) -> None:
    prefix = uuid.uuid4().hex[:8]
    one, two = redis_store(redis_url, prefix=prefix), redis_store(redis_url, prefix=prefix)
    try:
        await one.remember("acme", "resp_a", THERE)
        assert await two.locate("acme", "resp_a") == THERE
        assert await two.locate("globex", "resp_a") is None
        assert await two.locate("acme", "resp_b") is None
        probe = Redis.from_url(redis_url)
        ttl = await probe.pttl(f"{prefix}:resp:acme:resp_a")
        await probe.aclose()
        assert 0 < ttl <= 60_000
    finally:
        await one.close()
        await two.close()


async def test_redis_outage_falls_back_to_this_replica() -> None:
    with RedisServer() as server:
        store = redis_store(server.url, prefix="p")
        try:
            await store.remember("acme", "resp_a", HERE)
            server.stop()
            await store.remember("acme", "resp_b", THERE)  # never raises
            assert await store.locate("acme", "resp_b") == THERE
            assert await store.locate("acme", "resp_a") == HERE
            assert await store.locate("globex", "resp_b") is None
        finally:
            await store.close()
