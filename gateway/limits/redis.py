"""The Redis limiter: exact across gateway replicas, one Lua script and one round trip per admission.

Redis is never allowed to hang a request:
- socket and connect timeouts come from settings (tens of milliseconds): each round trip must finish within
  connect + socket timeout, and a call makes at most two (EVALSHA, then EVAL after a Redis restart emptied the
  script cache); redis-py retries nothing but one immediate reconnect after a connection error;
- a circuit breaker (gateway/breaker.py) stops calling a Redis that keeps failing, and lets one probe through after
  `breaker_reset_s`, so Redis coming back is picked up without a restart;
- every redis/socket exception becomes `LimiterUnavailable` in `redis_errors`, the one boundary, and
  `_when_unavailable` is the one place that applies the tenant's policy: fail_closed answers 503, fail_open admits
  against a local bucket holding this replica's share of the limit (limit // live replicas, from the heartbeats).
  A request under a token budget answers 503 either way: budgets stay exact (see `_when_unavailable`).

Nothing granted is stranded:
- settling never raises; a settle that cannot reach Redis is queued and replayed by the heartbeat once Redis answers.
  settle.lua is idempotent, so replaying a settle that did land (only its reply was lost) changes nothing;
- an admission whose call failed may still run on a stalled Redis when it wakes up, so its undoing is queued too;
- an admission whose caller is cancelled midway (the client left) finishes in the background and is settled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from sparsegate.gateway.breaker import BreakerState, CircuitBreaker
from sparsegate.gateway.errors import LimiterUnavailable, RateLimited
from sparsegate.gateway.limits.base import AdmissionRequest, RateState, Reservation, go_duration
from sparsegate.gateway.limits.buckets import BucketSpec, Observation, needs_settle, plan, rate_state, rejection, share
from sparsegate.gateway.limits.memory import MemoryLimiter
from sparsegate.gateway.limits.replicas import Heartbeat
from sparsegate.gateway.overload import FairDeadline, LoopMonitor
from sparsegate.gateway.settings import Budgets, LimiterSettings

log = logging.getLogger(__name__)

# Calls in flight to Redis at once, one connection each. A burst beyond this queues in the process, where waiting is
# our own load, not Redis failing: it does not count against the Redis deadline or the breaker. Opening hundreds of
# sockets at once instead would trip the tens-of-milliseconds connect timeout on a busy event loop.
MAX_CONNECTIONS = 32
# Settles kept for replay while Redis is away. Beyond this the oldest are dropped: their slots come back when the
# leases expire and their unused tokens are not refunded, which errs on the side of the limit.
MAX_PENDING_SETTLES = 10_000

_UNAVAILABLE = "The rate limiter is temporarily unavailable. Please retry shortly."


class _Script:
    """A Lua script shipped as package data, run by EVALSHA (EVAL when Redis does not know it yet)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = files(__package__).joinpath(name).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


class RedisCallFailed(LimiterUnavailable):
    """A call to Redis failed after it may have been sent: Redis may still run it (a timeout is no proof it did not)."""


@asynccontextmanager
async def redis_errors(deadline_s: float, monitor: LoopMonitor | None = None) -> AsyncIterator[None]:
    """The boundary: every Redis or socket failure, and any call outliving `deadline_s`, is `RedisCallFailed`.

    With a loop monitor the deadline runs in fair time (overload.py): time this process's own event loop was
    behind is not Redis being slow, so a busy gateway does not fail (or fail open) admissions Redis answered."""
    try:
        async with FairDeadline(monitor, deadline_s) if monitor is not None else asyncio.timeout(deadline_s):
            yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise RedisCallFailed(_UNAVAILABLE) from exc


class RedisLimiter:
    """Per-tenant requests/minute, tokens/minute and concurrency, shared by every replica using the same Redis."""

    def __init__(
        self, settings: LimiterSettings, *, url: str, replica_id: str, monitor: LoopMonitor | None = None
    ) -> None:
        self._settings = settings
        self._monitor = monitor
        self._prefix = settings.key_prefix
        self._replica_id = replica_id
        # Each round trip gets a window of connect + socket timeout (a connect only happens on a fresh connection).
        # redis-py gets no socket timeout of its own: it would run every send through asyncio.wait_for (a task per
        # command, ~30 % of a round trip here), and on Python 3.11 that wait_for can swallow a caller's cancel.
        self._window_s = settings.connect_timeout_s + settings.socket_timeout_s
        self._queue_wait_s = settings.queue_wait_s
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=None,  # never waits: `_slots` admits at most MAX_CONNECTIONS calls at once
            socket_timeout=None,  # `_window_s`, applied around each round trip in `_run`
            # The connect is bounded by `_window_s` around the call, in fair time when the gateway's loop monitor is
            # given; redis-py's own connect timeout runs in wall time and, on a busy loop, failed connects Redis
            # would have accepted (and opened the breaker). It stays only as a backstop.
            socket_connect_timeout=max(1.0, settings.connect_timeout_s),
            # redis-py retries timeouts 3× by default, which would multiply every timeout. One retry on a connection
            # error only: after a Redis restart each pooled connection is dead, and fails at once on first use.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            driver_info=None,  # no CLIENT SETINFO on each new connection
        )
        self._client = Redis.from_pool(pool)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._admit_script = _Script("admit.lua")
        self._settle = _Script("settle.lua")
        self._heartbeat_script = _Script("heartbeat.lua")
        self.breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_reset_s,
            name="redis limiter",
            guards="Redis",
            late_success_closes=True,  # any answer shows the one shared Redis is back: see CircuitBreaker
        )
        self._local = MemoryLimiter(settings)
        self._pending: deque[tuple[AdmissionRequest, str, int]] = deque(maxlen=MAX_PENDING_SETTLES)
        self._heartbeat = Heartbeat(settings.heartbeat_s, self._beat)
        self._background: set[asyncio.Future[None]] = set()

    @property
    def live_replicas(self) -> int:
        """The replica count last seen in Redis (1 until one is seen)."""
        return self._heartbeat.live_replicas

    @property
    def pending_settles(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Open the connections and start the heartbeat. Never fails: a Redis down at start is a Redis down.

        Connecting up front keeps connects (and their short timeout) out of the first burst of traffic."""
        await asyncio.gather(*(self._warm_connection() for _ in range(MAX_CONNECTIONS)))
        self._heartbeat.start()

    async def _warm_connection(self) -> None:
        with contextlib.suppress(LimiterUnavailable):
            async with redis_errors(self._window_s, self._monitor):
                await self._client.ping()

    async def close(self) -> None:
        await self._heartbeat.stop()
        if self._background:
            await asyncio.wait(self._background)
        if self.breaker.state is not BreakerState.OPEN:
            try:
                await self._flush_pending()
                # Leave the replica set now, so the others' fail-open shares grow without waiting for staleness.
                async with redis_errors(self._window_s, self._monitor):
                    await self._client.zrem(self._replicas_key, self._replica_id)
            except LimiterUnavailable:
                log.warning("limiter: Redis unreachable at close; %d settle(s) not replayed", len(self._pending))
        await self._client.aclose()

    # -- admission ------------------------------------------------------------------------------------------------

    async def admit(self, request: AdmissionRequest) -> Reservation:
        specs = plan(request)
        if not specs:
            return Reservation(request=request, state=RateState())
        if not needs_settle(specs):
            return await self._admit(request, specs)
        # Shielded: a caller cancelled mid-admission (the client went away) must not strand what Redis granted,
        # so the admission finishes on its own and is settled at once. The shield also keeps redis-py from
        # swallowing the caller's cancel on Python 3.11.
        admission = asyncio.ensure_future(self._admit(request, specs))
        try:
            return await asyncio.shield(admission)
        except asyncio.CancelledError:
            admission.add_done_callback(self._give_back)
            raise

    async def _admit(self, request: AdmissionRequest, specs: list[BucketSpec]) -> Reservation:
        lease = f"{self._replica_id}:{request.request_id}:{secrets.token_hex(4)}" if needs_settle(specs) else ""
        args: list[str | int | float] = [lease, self._settings.lease_ttl_s]
        for spec in specs:
            args += [spec.wire_kind, spec.limit, spec.cost]
        try:
            raw = await self._call(self._admit_script, self._keys(request.tenant, specs), args)
        except LimiterUnavailable as exc:
            if lease and isinstance(exc, RedisCallFailed):
                # A stalled Redis may still run this admission once it wakes up; queue its undoing, which is a
                # no-op if it never ran. Otherwise its slot would stay taken until the lease expires.
                self._queue_settle(request, lease, used_tokens=0)
            return await self._when_unavailable(request, exc)

        admitted, seen = _parse_admission(raw, len(specs))
        if not admitted:
            raise rejection(specs, seen, at=request.at)
        return Reservation(request=request, state=rate_state(specs, seen), lease_id=lease or None)

    def _give_back(self, admission: asyncio.Future[Reservation]) -> None:
        if admission.cancelled() or admission.exception() is not None:
            return
        task = asyncio.ensure_future(self.settle(admission.result(), used_tokens=0))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _when_unavailable(self, request: AdmissionRequest, exc: LimiterUnavailable) -> Reservation:
        """The tenant's failure policy, stated once. A request under a token budget is refused (503, retried by
        clients) whatever the policy: a period's usage lives in Redis, and admitting without it could spend past
        the quota, which, unlike a refused request, cannot be undone."""
        if request.on_failure == "fail_closed" or _under_budget(request):
            raise exc
        local = await self._admit_locally(request)
        return Reservation(request=request, state=local.state, lease_id=local.lease_id, degraded=True)

    def _local_request(self, request: AdmissionRequest) -> AdmissionRequest:
        n = self._heartbeat.live_replicas
        model_limits = None if request.model_limits is None else share(request.model_limits, n)
        return dataclasses.replace(request, limits=share(request.limits, n), model_limits=model_limits)

    async def _admit_locally(self, request: AdmissionRequest) -> Reservation:
        local = self._local_request(request)
        try:
            return await self._local.admit(local)
        except RateLimited as exc:
            if exc.can_ever_fit or not _fits_whole_limit(request):
                raise
            # Too large for this replica's share, not for the tenant's limit: it fits again once Redis is back.
            wait = max(1.0, self.breaker.reopens_in())
            raise RateLimited(
                f"Rate limit reached for tokens per min (TPM) on tenant {request.tenant!r}: the limiter is degraded "
                f"and this replica's share cannot hold Requested {request.tokens}. "
                f"Please try again in {go_duration(wait)}.",
                kind="tokens",
                retry_after_s=wait,
                rate_headers=exc.rate_headers,
            ) from None

    # -- settling -------------------------------------------------------------------------------------------------

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        lease = reservation.lease_id
        if lease is None:
            return
        try:
            if reservation.degraded:
                self._local.settle_lease(self._local_request(reservation.request), lease, used_tokens)
                return
            # Shielded: a caller cancelled mid-settle (client gone) must not keep its slot until the lease expires.
            await asyncio.shield(self._settle_remote(reservation.request, lease, used_tokens))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("limiter settle failed for %s", reservation.request.request_id)

    async def _settle_remote(self, request: AdmissionRequest, lease: str, used_tokens: int) -> None:
        try:
            await self._settle_once(request, lease, used_tokens)
        except LimiterUnavailable:
            self._queue_settle(request, lease, used_tokens)

    def _queue_settle(self, request: AdmissionRequest, lease: str, used_tokens: int) -> None:
        if len(self._pending) == self._pending.maxlen:
            log.warning("limiter: settle queue full, dropping the oldest (its lease will expire)")
        self._pending.append((request, lease, used_tokens))

    async def _settle_once(self, request: AdmissionRequest, lease: str, used_tokens: int) -> None:
        specs = plan(request)
        keys = self._keys(request.tenant, specs)
        # The registry first, then what settling changes: token buckets and concurrency slots (not rpm).
        settle_keys = keys[:1]
        args: list[str | int | float] = [lease, request.tokens - used_tokens]
        for key, spec in zip(keys[1:], specs[1:], strict=True):
            if spec.kind != "rpm":
                settle_keys.append(key)
                args += [spec.wire_kind[0], spec.limit]
        await self._call(self._settle, settle_keys, args)

    async def _flush_pending(self) -> None:
        while self._pending:
            request, lease, used = self._pending[0]
            await self._settle_once(request, lease, used)  # raises LimiterUnavailable: the rest stays queued
            self._pending.popleft()

    # -- Redis ----------------------------------------------------------------------------------------------------

    @property
    def _replicas_key(self) -> str:
        return f"{self._prefix}:replicas"

    def _keys(self, tenant: str, specs: Sequence[BucketSpec]) -> list[str]:
        # The {tenant} hash tag keeps all of a tenant's keys in one cluster slot, as a multi-key script requires.
        return [f"{self._prefix}:{{{tenant}}}:{spec.name}" for spec in specs]

    async def _call(self, script: _Script, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        """Run a script through the breaker and the error boundary; raises `LimiterUnavailable`."""
        if self.breaker.state is BreakerState.OPEN:
            raise LimiterUnavailable(_UNAVAILABLE)
        if self._slots.locked():
            # settings.queue_wait_s bounds the wait in that queue. While Redis is down the breaker empties it at once;
            # the bound matters when the process itself is overloaded.
            wait_s = self._queue_wait_s
            try:
                queue_wait = FairDeadline(self._monitor, wait_s) if self._monitor else asyncio.timeout(wait_s)
                async with queue_wait:  # in fair time too: a busy loop is no reason to refuse an admission
                    await self._slots.acquire()
            except TimeoutError:
                raise LimiterUnavailable(_UNAVAILABLE) from None  # overloaded here; says nothing about Redis
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            if not self.breaker.try_acquire():  # it may have opened while this call queued
                raise LimiterUnavailable(_UNAVAILABLE)
            try:
                result = await self._run(script, keys, args)
            except LimiterUnavailable as exc:
                self.breaker.record_failure()
                cause = exc.__cause__
                log.warning("redis limiter: %s failed: %s: %s", script.name, type(cause).__name__, cause)
                raise
            self.breaker.record_success()
            return result
        finally:
            self._slots.release()

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        async with redis_errors(self._window_s, self._monitor):
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                pass  # Redis restarted or its script cache was flushed: send the source, once
        async with redis_errors(self._window_s, self._monitor):
            return await self._client.eval(script.source, len(keys), *keys, *args)

    async def _beat(self) -> int | None:
        try:
            count = await self._call(
                self._heartbeat_script, [self._replicas_key], [self._replica_id, self._heartbeat.stale_after_s]
            )
        except LimiterUnavailable:
            return None
        with contextlib.suppress(LimiterUnavailable):  # what is left stays queued for the next beat
            await self._flush_pending()
        return int(count)


def _parse_admission(raw: Any, n: int) -> tuple[bool, list[Observation]]:
    seen = []
    for i in range(n):
        level, next_free = raw[1 + 2 * i], raw[2 + 2 * i]
        seen.append(Observation(float(level), float(next_free) if next_free else None))
    return raw[0] == 1, seen


def _under_budget(request: AdmissionRequest) -> bool:
    return any(b != Budgets() for b in (request.budgets, request.key_budgets if request.key_id else Budgets()))


def _fits_whole_limit(request: AdmissionRequest) -> bool:
    caps = [request.limits.tpm] + ([request.model_limits.tpm] if request.model_limits else [])
    return all(cap is None or request.tokens <= cap for cap in caps)
