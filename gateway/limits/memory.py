"""The in-process limiter: the embedded default when no Redis is configured, and the Redis limiter's fail-open
fallback. It is the Python twin of admit.lua / settle.lua and must keep their semantics; the shared test suite
runs against both.

Admission and settling never await, so on one event loop each is atomic, as a Lua script is in Redis.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from sparsegate.gateway.limits.base import AdmissionRequest, RateState, Reservation
from sparsegate.gateway.limits.buckets import (
    BucketSpec,
    Observation,
    lease_ok,
    needs_settle,
    plan,
    rate_ok,
    rate_state,
    refill,
    rejection,
)
from sparsegate.gateway.settings import LimiterSettings

Clock = Callable[[], float]
BucketKey = tuple[str, str]  # (tenant, bucket name)


class MemoryLimiter:
    """Per-tenant requests/minute, tokens/minute and concurrency, within this process only."""

    def __init__(self, settings: LimiterSettings | None = None, *, clock: Clock = time.monotonic) -> None:
        self._lease_ttl_s = (settings or LimiterSettings()).lease_ttl_s
        self._clock = clock
        self._rates: dict[BucketKey, tuple[float, float]] = {}  # (level, when)
        self._leases: dict[BucketKey, dict[str, float]] = {}  # lease id -> expiry
        # Budget periods: tokens used. Old periods are never read again; one entry per tenant and day is left behind.
        self._used: dict[BucketKey, int] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def admit(self, request: AdmissionRequest) -> Reservation:
        specs = plan(request)
        if not specs:
            return Reservation(request=request, state=RateState())
        now = self._clock()
        lease = f"{request.request_id}:{secrets.token_hex(4)}" if needs_settle(specs) else None

        seen = [self._observe(request.tenant, spec, now) for spec in specs]
        fits = all(
            rate_ok(spec, obs.level) if spec.is_rate else lease_ok(spec, obs.level)
            for spec, obs in zip(specs, seen, strict=True)
        )
        if not fits:
            raise rejection(specs, seen, at=request.at)

        after: list[Observation] = []
        for spec, obs in zip(specs, seen, strict=True):
            key = (request.tenant, spec.name)
            if spec.kind == "budget":
                self._used[key] = self._used.get(key, 0) + spec.cost
                after.append(Observation(obs.level - spec.cost))
            elif spec.is_rate:
                self._rates[key] = (obs.level - spec.cost, now)
                after.append(Observation(obs.level - spec.cost))
            else:
                assert lease is not None
                self._leases.setdefault(key, {})[lease] = now + self._lease_ttl_s
                after.append(Observation(obs.level + 1))
        return Reservation(request=request, state=rate_state(specs, after), lease_id=lease)

    def _observe(self, tenant: str, spec: BucketSpec, now: float) -> Observation:
        key = (tenant, spec.name)
        if spec.kind == "budget":
            return Observation(float(spec.limit - self._used.get(key, 0)))
        if spec.is_rate:
            stored = self._rates.get(key)
            level = float(spec.limit) if stored is None else refill(stored[0], stored[1], now, spec.limit)
            return Observation(level)
        leases = self._leases.get(key, {})
        for lease_id, expiry in list(leases.items()):
            if expiry <= now:
                del leases[lease_id]
        next_free = min(leases.values()) - now if leases else None
        return Observation(float(len(leases)), next_free)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.lease_id is None:
            return
        self.settle_lease(reservation.request, reservation.lease_id, used_tokens)

    def settle_lease(self, request: AdmissionRequest, lease: str, used_tokens: int) -> None:
        """Refund and release one lease; a lease already gone (settled, or expired) settles nothing."""
        specs = plan(request)
        now = self._clock()
        registry = self._leases.get((request.tenant, "leases"), {})
        expiry = registry.pop(lease, None)
        if expiry is None or expiry <= now:
            return
        refund = request.tokens - used_tokens
        for spec in specs[1:]:
            key = (request.tenant, spec.name)
            if spec.kind == "concurrent":
                self._leases.get(key, {}).pop(lease, None)
            elif spec.kind == "budget" and key in self._used:
                self._used[key] -= refund
            elif spec.kind == "tpm" and refund:
                stored = self._rates.get(key)
                level = float(spec.limit) if stored is None else refill(stored[0], stored[1], now, spec.limit)
                self._rates[key] = (min(float(spec.limit), level + refund), now)
