"""The limiter's contract: what admission takes, what it hands back, and the OpenAI rate-limit headers.

A request is admitted once (one atomic step over requests, tokens and concurrency), then settled once with the
tokens it really used. Admission reserves prompt tokens + the completion budget; settling refunds the difference
and releases the concurrency slot. Settling never raises: it runs on every path, errors included.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from sparsegate.gateway.settings import Budgets, FailurePolicy, Limits


@dataclass(frozen=True)
class AdmissionRequest:
    tenant: str
    model: str
    limits: Limits
    model_limits: Limits | None
    tokens: int  # reserved at admission: prompt tokens + completion budget
    request_id: str
    on_failure: FailurePolicy = "fail_open"
    budgets: Budgets = field(default_factory=Budgets)  # the tenant's token quotas per UTC day / month
    key_id: str | None = None
    key_budgets: Budgets = field(default_factory=Budgets)  # the key's own quotas, on top of the tenant's
    # Wall-clock time of admission: it picks the budget periods, and settling charges the same ones even when the
    # request ends after midnight.
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class BucketState:
    """One bucket as a client sees it: its size, what is left now, and the time until it is full again."""

    limit: int
    remaining: int
    reset_s: float


def go_duration(seconds: float) -> str:
    """OpenAI's Go-style duration: "1s", "6m0s", "20ms", "1h2m3s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    total = seconds
    hours = int(total // 3600)
    total -= hours * 3600
    minutes = int(total // 60)
    total -= minutes * 60
    secs = f"{total:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True)
class RateState:
    """The buckets that apply to a tenant (None where no limit is set), for the x-ratelimit-* headers."""

    requests: BucketState | None = None
    tokens: BucketState | None = None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{name}"] = str(bucket.limit)
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, bucket.remaining))
            out[f"x-ratelimit-reset-{name}"] = go_duration(bucket.reset_s)
        return out


@dataclass
class Reservation:
    """What admission granted. `settle` consumes it exactly once."""

    request: AdmissionRequest
    state: RateState
    lease_id: str | None = None
    degraded: bool = False  # admitted by the local fail-open bucket while Redis was down
    settled: bool = field(default=False)


class Limiter(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def admit(self, request: AdmissionRequest) -> Reservation:
        """Admit or raise `RateLimited` / `LimiterUnavailable` (errors.py). Never hangs past the Redis timeouts."""
        ...

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Refund `reserved - used` tokens and release the concurrency slot. Idempotent; never raises."""
        ...
