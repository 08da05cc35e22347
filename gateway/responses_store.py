"""Where each stored OpenAI response lives: response id → (tenant, pool, worker), with a TTL.

SGLang keeps a stored response (and the conversation that led to it) in the memory of the one worker that produced
it, so `previous_response_id`, `GET /v1/responses/{id}` and `cancel` must reach that worker. The gateway mints the
response id itself (SGLang uses the request's `request_id` as the response id), records the worker before the
answer starts, and looks it up on follow-ups.

Entries are keyed by tenant *and* id: another tenant's lookup of the same id finds nothing, which the endpoints
answer with 404, exactly as for an id that never existed. Nothing here is shown to clients; worker URLs stay inside.

Two stores with one interface:
- `MemoryResponseStore`: this process only, bounded (oldest entries go first) and expiring;
- `RedisResponseStore`: shared by every replica on the same Redis (`SET ... EX`), so a follow-up may arrive at any
  replica. Redis failures never fail a request: each one is logged, and the store falls back to a local memory
  store for as long as Redis is away. A follow-up whose entry only the unreachable Redis knows is then a 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sparsegate.gateway.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ResponseLocation:
    """The worker that holds one stored response."""

    pool: str
    worker: str


class ResponseStore(Protocol):
    """Remembers which worker holds each tenant's stored responses."""

    async def remember(self, tenant: str, response_id: str, location: ResponseLocation) -> None: ...

    async def locate(self, tenant: str, response_id: str) -> ResponseLocation | None: ...

    async def close(self) -> None: ...


class MemoryResponseStore:
    """This process's store: at most `max_entries`, each for `ttl_s` seconds."""

    def __init__(self, *, ttl_s: float, max_entries: int, clock: Clock = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, ResponseLocation]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def remember(self, tenant: str, response_id: str, location: ResponseLocation) -> None:
        key = (tenant, response_id)
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self._ttl_s, location)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def locate(self, tenant: str, response_id: str) -> ResponseLocation | None:
        entry = self._entries.get((tenant, response_id))
        if entry is None:
            return None
        expires, location = entry
        if expires <= self._clock():
            del self._entries[(tenant, response_id)]
            return None
        return location

    async def close(self) -> None:
        self._entries.clear()


class RedisResponseStore:
    """The store shared by every replica on one Redis; a local memory store covers Redis outages."""

    def __init__(
        self, client: Redis, *, prefix: str, ttl_s: float, deadline_s: float, fallback: MemoryResponseStore
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._deadline_s = deadline_s
        self._fallback = fallback

    def _key(self, tenant: str, response_id: str) -> str:
        return f"{self._prefix}:resp:{tenant}:{response_id}"

    async def remember(self, tenant: str, response_id: str, location: ResponseLocation) -> None:
        await self._fallback.remember(tenant, response_id, location)
        value = json.dumps({"pool": location.pool, "worker": location.worker})
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._client.set(self._key(tenant, response_id), value, px=self._ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("response store: Redis unavailable, %s kept on this replica only (%s)", response_id, exc)

    async def locate(self, tenant: str, response_id: str) -> ResponseLocation | None:
        try:
            async with asyncio.timeout(self._deadline_s):
                raw = await self._client.get(self._key(tenant, response_id))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("response store: Redis unavailable, looking %s up on this replica only (%s)", response_id, exc)
            return await self._fallback.locate(tenant, response_id)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return ResponseLocation(pool=str(data["pool"]), worker=str(data["worker"]))
        except (ValueError, KeyError, TypeError):
            log.warning("response store: unreadable entry for %s", response_id)
            return None

    async def close(self) -> None:
        await self._fallback.close()
        await self._client.aclose()


def build_response_store(settings: Settings) -> ResponseStore:
    """Redis when the settings name one (shared across replicas), else this process's memory."""
    responses = settings.responses
    memory = MemoryResponseStore(ttl_s=responses.ttl_s, max_entries=responses.max_entries)
    url = settings.effective_redis_url
    if not url:
        return memory
    limiter = settings.limiter
    client = Redis.from_url(
        url,
        socket_connect_timeout=limiter.connect_timeout_s,
        socket_timeout=None,  # each call is bounded by `deadline_s` instead
        max_connections=16,
    )
    deadline = responses.redis_deadline_s
    return RedisResponseStore(
        client, prefix=limiter.key_prefix, ttl_s=responses.ttl_s, deadline_s=deadline, fallback=memory
    )
