"""The bucket math both backends share: which buckets apply, how they refill, and what admission reports.

Why a token bucket with continuous refill (and not fixed or sliding windows):
- Smooth: a bucket of `rpm` refills at rpm/60 per second, so there is no window edge at which a tenant can spend
  a full window's allowance twice in a row (fixed windows admit 2× the limit across a boundary).
- Exact headers: `remaining` is the bucket level and `reset` is (limit - level) / rate, the true time until
  the bucket is full again, which is what OpenAI's x-ratelimit-* headers promise. `retry-after` is
  (cost - level) / rate, the real time until enough has refilled.
- O(1) state: two numbers per bucket (level, time of last update), whatever the traffic; a sliding log needs one
  entry per request.
- Reserve/settle fits naturally: a refund adds tokens back (capped at capacity), an overrun takes more.

Budgets (token quotas per UTC day and month, per tenant and optionally per key) are buckets that never refill:
their level is `limit - used` in the current period, and a new period is a new key (`bd:20261201`, `bm:202612`).
They are charged and refunded in the same atomic steps as the rate buckets; the period is picked from the
admission's wall-clock time, so settling after midnight refunds the day that was charged.

`admit.lua` and `settle.lua` are the Redis twins of `MemoryLimiter`; both follow the functions here, and the
Python side of both backends turns their raw observations into a Reservation or a RateLimited through
`rate_state` and `rejection`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sparsegate.gateway.errors import QuotaExceeded, RateLimited
from sparsegate.gateway.limits.base import AdmissionRequest, BucketState, RateState, go_duration
from sparsegate.gateway.settings import Budgets, Limits

WINDOW_S = 60.0  # every rate limit is "per minute"
CONCURRENCY_HINT_S = 1.0  # retry hint when only a concurrency slot is missing: slots free as requests finish

BucketKind = Literal["rpm", "tpm", "concurrent", "budget"]
BUDGET_KEY_GRACE_S = 3600  # a period's counter outlives the period by this much (late settles find it)


@dataclass(frozen=True)
class BucketSpec:
    """One bucket an admission touches. `name` is the key suffix under the tenant (`rpm`, `m:<model>:tpm`, ...).

    A concurrency bucket with `limit == 0` is the tenant's lease registry without a cap: it still records the
    request so that settling is idempotent and exact (see settle.lua).
    """

    name: str
    kind: BucketKind
    limit: int
    cost: int
    scope: str  # "tenant 'acme'" or "tenant 'acme' and model 'glm-5'", for messages
    period: str = ""  # budgets: "day" or "month"
    resets_at: float = 0.0  # budgets: when the period ends (unix seconds, a UTC midnight)

    @property
    def is_rate(self) -> bool:
        """A bucket with a token level (rpm, tpm, and budgets, which never refill); not a concurrency bucket."""
        return self.kind != "concurrent"

    @property
    def wire_kind(self) -> str:
        """How admit.lua knows the bucket: 'r' rate, 'c' concurrency, 'b:<unix expiry>' budget."""
        if self.kind == "budget":
            return f"b:{int(self.resets_at) + BUDGET_KEY_GRACE_S}"
        return "c" if self.kind == "concurrent" else "r"


def day_period(at: float) -> tuple[str, float]:
    """The UTC day holding `at`: its id and the unix time it ends."""
    return _periods(int(at // 86400))[0]


def month_period(at: float) -> tuple[str, float]:
    """The UTC month holding `at`: its id and the unix time it ends."""
    return _periods(int(at // 86400))[1]


@functools.lru_cache(maxsize=8)
def _periods(day: int) -> tuple[tuple[str, float], tuple[str, float]]:
    # Unix time has no leap seconds: day n starts at n * 86400 UTC. Cached: every admission asks for the same day.
    start = datetime.fromtimestamp(day * 86400, UTC)
    month = start.replace(day=1)
    month_end = (
        month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)
    )
    return (start.strftime("%Y%m%d"), day * 86400 + 86400.0), (month.strftime("%Y%m"), month_end.timestamp())


def _budget_specs(prefix: str, scope: str, budgets: Budgets, request: AdmissionRequest) -> list[BucketSpec]:
    specs = []
    if budgets.tokens_per_day is not None:
        day, ends = day_period(request.at)
        specs.append(
            BucketSpec(f"{prefix}bd:{day}", "budget", budgets.tokens_per_day, request.tokens, scope, "day", ends)
        )
    if budgets.tokens_per_month is not None:
        month, ends = month_period(request.at)
        specs.append(
            BucketSpec(f"{prefix}bm:{month}", "budget", budgets.tokens_per_month, request.tokens, scope, "month", ends)
        )
    return specs


@dataclass(frozen=True)
class Observation:
    """What a backend saw in one bucket: after charging when admitted, as found when rejected.

    `level` is the token level of a rate bucket, or the number of live leases of a concurrency bucket.
    `next_free_s` is, for a concurrency bucket, the time until its earliest lease expires (None if empty).
    """

    level: float
    next_free_s: float | None = None


def plan(request: AdmissionRequest) -> list[BucketSpec]:
    """The buckets that apply to a request. When any exist and settling has work to do (a token refund or a slot
    to release), the first is the tenant's lease registry."""
    tenant_scope = f"tenant {request.tenant!r}"
    model_scope = f"tenant {request.tenant!r} and model {request.model!r}"
    levels: list[tuple[str, str, Limits]] = [("", tenant_scope, request.limits)]
    if request.model_limits is not None:
        levels.append((f"m:{request.model}:", model_scope, request.model_limits))

    specs: list[BucketSpec] = []
    for prefix, scope, limits in levels:
        if limits.rpm is not None:
            specs.append(BucketSpec(f"{prefix}rpm", "rpm", limits.rpm, 1, scope))
        if limits.tpm is not None:
            specs.append(BucketSpec(f"{prefix}tpm", "tpm", limits.tpm, request.tokens, scope))
        if prefix and limits.max_concurrent is not None:
            specs.append(BucketSpec(f"{prefix}leases", "concurrent", limits.max_concurrent, 1, scope))
    specs += _budget_specs("", tenant_scope, request.budgets, request)
    if request.key_id is not None:
        key_scope = f"key {request.key_id!r} of tenant {request.tenant!r}"
        specs += _budget_specs(f"k:{request.key_id}:", key_scope, request.key_budgets, request)
    if any(s.kind != "rpm" for s in specs) or request.limits.max_concurrent is not None:
        cap = request.limits.max_concurrent or 0
        specs.insert(0, BucketSpec("leases", "concurrent", cap, 1, tenant_scope))
    return specs


def needs_settle(specs: Sequence[BucketSpec]) -> bool:
    return bool(specs) and specs[0].name == "leases"


def refill(level: float, updated: float, now: float, limit: int) -> float:
    """The level of a bucket last seen at `level` when `updated`, at `now`; absent state means a full bucket."""
    return min(float(limit), level + max(0.0, now - updated) * limit / WINDOW_S)


def rate_ok(spec: BucketSpec, level: float) -> bool:
    return level >= spec.cost


def lease_ok(spec: BucketSpec, in_use: float) -> bool:
    return spec.limit == 0 or in_use + 1 <= spec.limit


def _bucket_state(spec: BucketSpec, level: float) -> BucketState:
    return BucketState(
        limit=spec.limit,
        remaining=math.floor(level),
        reset_s=max(0.0, (spec.limit - level) * WINDOW_S / spec.limit),
    )


def rate_state(specs: Sequence[BucketSpec], seen: Sequence[Observation]) -> RateState:
    """The headers' view: for requests and for tokens, the most constraining bucket (tenant or tenant+model)."""
    best: dict[str, BucketState] = {}
    for spec, obs in zip(specs, seen, strict=True):
        if spec.kind not in ("rpm", "tpm"):
            continue
        state = _bucket_state(spec, obs.level)
        current = best.get(spec.kind)
        if current is None or state.remaining < current.remaining:
            best[spec.kind] = state
    return RateState(requests=best.get("rpm"), tokens=best.get("tpm"))


def _budget_exhausted(spec: BucketSpec, obs: Observation, at: float, headers: dict[str, str]) -> QuotaExceeded:
    used = max(0, spec.limit - math.floor(obs.level + 1e-9))
    resets = datetime.fromtimestamp(spec.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    wait = go_duration(max(0.0, spec.resets_at - at))
    too_big = "; this request alone is larger than the budget" if spec.cost > spec.limit else ""
    return QuotaExceeded(
        f"You exceeded your token budget of tokens per {spec.period} on {spec.scope}: Limit {spec.limit}, "
        f"Used {used}, Requested {spec.cost}{too_big}. The budget resets at {resets} (in {wait}).",
        rate_headers=headers,
    )


def _wait_s(spec: BucketSpec, obs: Observation) -> float:
    if spec.is_rate:
        return (spec.cost - obs.level) * WINDOW_S / spec.limit
    if obs.next_free_s is not None:
        return max(0.001, min(CONCURRENCY_HINT_S, obs.next_free_s))
    return CONCURRENCY_HINT_S


def rejection(specs: Sequence[BucketSpec], seen: Sequence[Observation], *, at: float | None = None) -> RateLimited:
    """The 429 for an admission that failed: a spent budget, else the bucket that keeps the request out longest.
    `at` is the admission's wall-clock time (for the wait until a budget resets)."""
    headers = rate_state(specs, seen).headers()
    for spec, obs in zip(specs, seen, strict=True):  # a spent budget first: no wait short of its reset helps
        if spec.kind == "budget" and not rate_ok(spec, obs.level):
            return _budget_exhausted(spec, obs, time.time() if at is None else at, headers)
    for spec in specs:
        if spec.kind == "tpm" and spec.cost > spec.limit:
            return RateLimited(
                f"Request too large for tokens per min (TPM) on {spec.scope}: Limit {spec.limit}, "
                f"Requested {spec.cost}. The input or output tokens must be reduced in order to run "
                "successfully; retrying cannot help.",
                kind="tokens",
                retry_after_s=None,
                can_ever_fit=False,
                rate_headers=headers,
            )

    failing = [
        (spec, obs, _wait_s(spec, obs))
        for spec, obs in zip(specs, seen, strict=True)
        if not (rate_ok(spec, obs.level) if spec.is_rate else lease_ok(spec, obs.level))
    ]
    if not failing:
        raise ValueError("rejection() called for an admission that fits every bucket")
    spec, obs, wait = max(failing, key=lambda f: f[2])
    if spec.kind == "concurrent":
        message = (
            f"Rate limit reached for concurrent requests on {spec.scope}: Limit {spec.limit}, "
            f"In flight {math.floor(obs.level)}, Requested 1. Please try again in {go_duration(wait)}."
        )
    else:
        label = "requests per min (RPM)" if spec.kind == "rpm" else "tokens per min (TPM)"
        used = min(spec.limit, max(0, math.ceil(spec.limit - obs.level - 1e-9)))
        message = (
            f"Rate limit reached for {label} on {spec.scope}: Limit {spec.limit}, Used {used}, "
            f"Requested {spec.cost}. Please try again in {go_duration(wait)}."
        )
    return RateLimited(
        message,
        kind="tokens" if spec.kind == "tpm" else "requests",
        retry_after_s=wait,
        can_ever_fit=True,
        rate_headers=headers,
    )


def share(limits: Limits, replicas: int) -> Limits:
    """This replica's part of a limit while Redis is unreachable: limit // replicas, at least 1.

    Flooring keeps the sum over replicas at or under the limit (the peers' N× failure); the floor of 1 keeps a tiny
    limit usable, at the cost of exceeding it when replicas outnumber it.
    """
    n = max(1, replicas)

    def part(value: int | None) -> int | None:
        return None if value is None else max(1, value // n)

    return limits.model_copy(
        update={"rpm": part(limits.rpm), "tpm": part(limits.tpm), "max_concurrent": part(limits.max_concurrent)}
    )
