"""Admission control: per-tenant requests/minute, tokens/minute and concurrency.

`build_limiter` picks the backend from the settings: `RedisLimiter` (exact across gateway replicas) when a Redis
URL is configured, else `MemoryLimiter` (this process only). Both implement `Limiter` (base.py) with the same
semantics, and one shared test suite runs against both.
"""

from __future__ import annotations

from sparsegate.gateway.limits.base import (
    AdmissionRequest,
    BucketState,
    Limiter,
    RateState,
    Reservation,
    go_duration,
)
from sparsegate.gateway.limits.memory import MemoryLimiter
from sparsegate.gateway.limits.redis import RedisLimiter
from sparsegate.gateway.overload import LoopMonitor
from sparsegate.gateway.settings import Settings

__all__ = [
    "AdmissionRequest",
    "BucketState",
    "Limiter",
    "MemoryLimiter",
    "RateState",
    "RedisLimiter",
    "Reservation",
    "build_limiter",
    "go_duration",
]


def build_limiter(settings: Settings, *, replica_id: str, monitor: LoopMonitor | None = None) -> Limiter:
    """The limiter the settings ask for; call `start()` on it in the lifespan and `close()` on the way out.
    With `monitor`, Redis deadlines run in fair time (limits/redis.py)."""
    url = settings.effective_redis_url
    if url:
        return RedisLimiter(settings.limiter, url=url, replica_id=replica_id, monitor=monitor)
    return MemoryLimiter(settings.limiter)
