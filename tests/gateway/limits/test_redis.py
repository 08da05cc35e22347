"""RedisLimiter only: replicas sharing one Redis, and Redis failing (stopped, hung) and coming back.

Time bounds here are correctness bounds derived from the timeouts (50 ms socket and connect), asserted
generously at 1 s: a call that hangs on a dead Redis fails them by orders of magnitude.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from sparsegate.gateway.breaker import BreakerState
from sparsegate.gateway.errors import LimiterUnavailable, RateLimited
from sparsegate.gateway.limits import AdmissionRequest, Limiter, RedisLimiter, Reservation, build_limiter
from sparsegate.gateway.limits.memory import MemoryLimiter
from sparsegate.gateway.settings import PoolConfig, Settings, TenantConfig, hash_api_key
from tests.gateway.limits.conftest import LimiterFactory
from tests.gateway.limits.support import admission
from tests.gateway.limits.test_limiter import admit_all
from tests.redis_server import RedisServer

BOUND_S = 1.0
T = TypeVar("T")


async def replica(factory: LimiterFactory, **settings: object) -> RedisLimiter:
    limiter = await factory(**settings)
    assert isinstance(limiter, RedisLimiter)
    return limiter


async def bounded(call: Awaitable[T]) -> T:
    """Await `call` and check it came back within BOUND_S, whatever it returned or raised."""
    start = time.monotonic()
    try:
        return await call
    finally:
        assert time.monotonic() - start < BOUND_S


async def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def admit_soon(limiter: Limiter, request: AdmissionRequest, timeout_s: float = 1.0) -> Reservation:
    """Admit, retrying 429s for a short while (for slots given back in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await limiter.admit(request)
        except RateLimited:
            assert time.monotonic() < deadline, "the slot never came back"
            await asyncio.sleep(0.02)


async def test_two_replicas_never_admit_more_than_the_limit_together(make_replica: LimiterFactory) -> None:
    a, b = await replica(make_replica), await replica(make_replica)
    batch = [admission(rpm=30) for _ in range(200)]
    results = await asyncio.gather(admit_all(a, batch[:100]), admit_all(b, batch[100:]))
    assert sum(len(admitted) for admitted, _ in results) == 30

    batch = [admission(tenant="conc", max_concurrent=7) for _ in range(100)]
    results = await asyncio.gather(admit_all(a, batch[:50]), admit_all(b, batch[50:]))
    assert sum(len(admitted) for admitted, _ in results) == 7

    batch = [admission(tenant="tok", tpm=1000, tokens=100) for _ in range(60)]
    results = await asyncio.gather(admit_all(a, batch[:30]), admit_all(b, batch[30:]))
    assert sum(len(admitted) for admitted, _ in results) == 10


async def test_settling_twice_from_two_replicas_refunds_once(make_replica: LimiterFactory) -> None:
    a, b = await replica(make_replica), await replica(make_replica)
    first = await a.admit(admission(tpm=1000, tokens=500))
    await b.admit(admission(tpm=1000, tokens=400))  # 100 left
    copy = dataclasses.replace(first)  # the same reservation as another replica would see it
    await b.settle(copy, used_tokens=0)
    await a.settle(first, used_tokens=0)  # already settled in Redis: changes nothing
    with pytest.raises(RateLimited) as caught:
        await a.admit(admission(tpm=1000, tokens=700))  # 600 left (+ a few refilled), not 1000
    assert caught.value.headers()["x-ratelimit-remaining-tokens"] in {"600", "601", "602", "603", "604", "605"}


async def test_admission_survives_an_emptied_script_cache(
    make_replica: LimiterFactory, redis_server: RedisServer
) -> None:
    a = await replica(make_replica)
    await a.admit(admission(rpm=5))
    client = Redis.from_url(redis_server.url)
    await client.script_flush()
    await client.aclose()
    r = await a.admit(admission(rpm=5))  # NOSCRIPT, then EVAL
    assert r.state.requests is not None
    assert r.state.requests.remaining == 3
    assert a.breaker.state is BreakerState.CLOSED


async def test_replicas_count_each_other_by_heartbeat(make_replica: LimiterFactory) -> None:
    a, b = await replica(make_replica), await replica(make_replica)
    await eventually(lambda: a.live_replicas == 2 and b.live_replicas == 2)
    await b.close()  # leaves the set at once
    await eventually(lambda: a.live_replicas == 1)


async def test_admission_abandoned_by_its_caller_gives_its_slot_back(make_replica: LimiterFactory) -> None:
    a = await replica(make_replica)
    for delay in range(4):  # cancel at several points of the round trip
        task = asyncio.create_task(a.admit(admission(max_concurrent=1)))
        for _ in range(delay):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held = await admit_soon(a, admission(max_concurrent=1))
        await a.settle(held, used_tokens=0)


async def test_stopped_redis_fails_by_policy_within_the_timeouts_and_recovers(
    make_replica_own_redis: LimiterFactory, own_redis: RedisServer
) -> None:
    a, b = await replica(make_replica_own_redis), await replica(make_replica_own_redis)
    await eventually(lambda: a.live_replicas == 2)
    before = await a.admit(admission(max_concurrent=5))
    assert not before.degraded

    own_redis.stop()
    with pytest.raises(LimiterUnavailable) as caught:
        await bounded(a.admit(admission(rpm=20, on_failure="fail_closed")))
    assert caught.value.status_code == 503
    # fail_open: this replica's share is 20 // 2 replicas = 10.
    degraded = [await bounded(a.admit(admission(rpm=20))) for _ in range(10)]
    assert all(r.degraded for r in degraded)
    with pytest.raises(RateLimited):
        await bounded(a.admit(admission(rpm=20)))
    assert a.breaker.state is BreakerState.OPEN
    await bounded(a.settle(before, used_tokens=1))  # queued, never raised
    await bounded(a.settle(degraded[0], used_tokens=1))  # settled against the local bucket

    own_redis.start()  # same port, empty
    await eventually(lambda: a.breaker.state is BreakerState.CLOSED)
    r = await a.admit(admission(rpm=20, on_failure="fail_closed"))
    assert not r.degraded
    assert r.state.requests is not None
    assert r.state.requests.remaining == 19  # counted in Redis again (which restarted empty)
    await eventually(lambda: b.breaker.state is BreakerState.CLOSED)
    assert not (await b.admit(admission(rpm=20))).degraded


async def test_hung_redis_is_timed_out_and_settles_are_replayed(
    make_replica_own_redis: LimiterFactory, own_redis: RedisServer
) -> None:
    a = await replica(make_replica_own_redis)
    held = await a.admit(admission(max_concurrent=1, tpm=1000, tokens=500))

    own_redis.pause()  # connections open, nothing answers: only the timeouts stop the calls
    with pytest.raises(LimiterUnavailable):
        await bounded(a.admit(admission(max_concurrent=1, on_failure="fail_closed")))
    await bounded(a.settle(held, used_tokens=100))
    assert a.pending_settles >= 1
    local = await bounded(a.admit(admission(max_concurrent=1, tpm=1000, tokens=10)))
    assert local.degraded

    own_redis.resume()
    await eventually(lambda: a.pending_settles == 0)
    # The replayed settle freed the slot and refunded 400 of the 500 tokens; the admission sent during the stall
    # (which Redis ran when it woke) was undone as well.
    r = await a.admit(admission(max_concurrent=1, tpm=1000, tokens=10, on_failure="fail_closed"))
    assert not r.degraded
    assert r.state.tokens is not None
    assert 890 <= r.state.tokens.remaining <= 900


async def test_many_concurrent_calls_on_a_dead_redis_all_return_quickly(
    make_replica_own_redis: LimiterFactory, own_redis: RedisServer
) -> None:
    a = await replica(make_replica_own_redis)
    own_redis.pause()
    start = time.monotonic()
    results = await asyncio.gather(
        *(a.admit(admission(rpm=1000, on_failure="fail_closed")) for _ in range(300)), return_exceptions=True
    )
    assert time.monotonic() - start < BOUND_S
    assert all(isinstance(r, LimiterUnavailable) for r in results)
    own_redis.resume()


def test_build_limiter_picks_the_backend_from_the_settings(redis_server: RedisServer) -> None:
    base = {
        "tenants": [TenantConfig(name="acme", api_keys=[hash_api_key("k")], models=["*"])],
        "pools": [PoolConfig(name="p", model="m", max_context=1000, workers=["http://127.0.0.1:1"])],
    }
    assert isinstance(build_limiter(Settings(**base), replica_id="r1"), MemoryLimiter)
    with_redis = Settings(**base, redis_url=redis_server.url)
    limiter: Limiter = build_limiter(with_redis, replica_id="r1")
    assert isinstance(limiter, RedisLimiter)
    asyncio.run(limiter.close())


async def test_degraded_reservation_keeps_its_shape(
    make_replica_own_redis: LimiterFactory, own_redis: RedisServer
) -> None:
    a = await replica(make_replica_own_redis)
    own_redis.stop()
    r: Reservation = await a.admit(admission(rpm=60, tpm=6000, tokens=100))
    assert r.degraded
    assert r.request.limits.rpm == 60  # the caller's request, not the local share
    assert set(r.state.headers()) >= {"x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens"}
