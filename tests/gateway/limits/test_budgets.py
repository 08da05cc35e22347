"""Token budgets per UTC day and month, per tenant and per key: the same suite against both limiter backends.

The period comes from the admission's wall-clock time (`AdmissionRequest.at`), which these tests set: that is the
fake clock for day and month rollover, and it is what both the Lua script and the memory twin key the periods by.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from sparsegate.gateway.errors import LimiterUnavailable, QuotaExceeded, RateLimited
from sparsegate.gateway.limits import MemoryLimiter
from sparsegate.gateway.limits.base import AdmissionRequest
from sparsegate.gateway.limits.buckets import day_period, month_period
from sparsegate.gateway.settings import Budgets, Limits
from tests.gateway.limits.conftest import LimiterFactory


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOON = ts("2026-12-01T12:00:00")


def ask(
    tokens: int,
    *,
    at: float = NOON,
    day: int | None = None,
    month: int | None = None,
    key: str | None = None,
    key_day: int | None = None,
    tenant: str = "acme",
    tpm: int | None = None,
) -> AdmissionRequest:
    return AdmissionRequest(
        tenant=tenant,
        model="glm-5",
        limits=Limits(tpm=tpm),
        model_limits=None,
        tokens=tokens,
        request_id=uuid.uuid4().hex[:12],
        budgets=Budgets(tokens_per_day=day, tokens_per_month=month),
        key_id=key,
        key_budgets=Budgets(tokens_per_day=key_day),
        at=at,
    )


def test_periods_are_utc_days_and_months() -> None:
    assert day_period(ts("2026-12-31T23:59:59")) == ("20261231", ts("2027-01-01T00:00:00"))
    assert day_period(ts("2027-01-01T00:00:00")) == ("20270101", ts("2027-01-02T00:00:00"))
    assert month_period(ts("2026-12-15T08:00:00")) == ("202612", ts("2027-01-01T00:00:00"))
    assert month_period(ts("2028-02-29T23:00:00")) == ("202802", ts("2028-03-01T00:00:00"))


async def test_a_day_budget_runs_out_and_names_itself_and_its_reset(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    for _ in range(3):
        await limiter.admit(ask(300, day=1000))
    with pytest.raises(QuotaExceeded) as caught:
        await limiter.admit(ask(300, day=1000, at=NOON + 3600))
    err = caught.value
    assert err.status_code == 429 and err.error_code == "insufficient_quota" and err.error_type == "insufficient_quota"
    assert "tokens per day" in err.message and "Limit 1000, Used 900, Requested 300" in err.message
    assert "2026-12-02T00:00:00Z" in err.message and "(in 11h0m0s)" in err.message
    assert err.headers()["x-should-retry"] == "false" and "retry-after" not in err.headers()
    await limiter.admit(ask(100, day=1000))  # what is left still fits


async def test_a_new_day_starts_a_new_budget(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(ask(1000, day=1000, at=ts("2026-12-01T23:59:59")))
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ask(1, day=1000, at=ts("2026-12-01T23:59:59")))
    await limiter.admit(ask(1000, day=1000, at=ts("2026-12-02T00:00:00")))


async def test_a_month_budget_spans_days_and_rolls_over_on_the_first(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(ask(600, month=1000, at=ts("2026-12-01T10:00:00")))
    await limiter.admit(ask(400, month=1000, at=ts("2026-12-20T10:00:00")))
    with pytest.raises(QuotaExceeded) as caught:
        await limiter.admit(ask(1, month=1000, at=ts("2026-12-31T10:00:00")))
    assert "tokens per month" in caught.value.message and "2027-01-01T00:00:00Z" in caught.value.message
    await limiter.admit(ask(1000, month=1000, at=ts("2027-01-01T00:00:01")))


async def test_settling_refunds_the_unused_reservation_to_the_period_charged(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    late = await limiter.admit(ask(800, day=1000, at=ts("2026-12-01T23:59:00")))
    await limiter.settle(late, 100)  # settles after midnight (by the wall clock): the 1st gets the refund
    await limiter.admit(ask(900, day=1000, at=ts("2026-12-01T23:59:30")))
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ask(1, day=1000, at=ts("2026-12-01T23:59:40")))


async def test_usage_over_the_reservation_is_charged_to_the_budget(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    first = await limiter.admit(ask(100, day=1000))
    await limiter.settle(first, 700)
    await limiter.admit(ask(300, day=1000))
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ask(1, day=1000))


async def test_a_key_budget_applies_on_top_of_the_tenants(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(ask(500, day=10_000, key="key-a", key_day=500))
    with pytest.raises(QuotaExceeded) as caught:
        await limiter.admit(ask(1, day=10_000, key="key-a", key_day=500))
    assert "key 'key-a' of tenant 'acme'" in caught.value.message
    await limiter.admit(ask(9000, day=10_000, key="key-b"))  # another key of the tenant: only the tenant's
    with pytest.raises(QuotaExceeded) as tenant_caught:
        await limiter.admit(ask(600, day=10_000, key="key-b"))
    assert "on tenant 'acme'" in tenant_caught.value.message


async def test_a_refused_admission_charges_no_budget(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(ask(900, day=1000, month=5000))
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ask(200, day=1000, month=5000))
    await limiter.admit(ask(100, day=1000, month=5000))
    with pytest.raises(QuotaExceeded) as caught:
        await limiter.admit(ask(1, day=1000, month=5000))
    assert "tokens per day" in caught.value.message  # the month (1000 of 5000 used) was not charged by refusals
    await limiter.admit(ask(4000, month=5000))


async def test_a_rate_limit_still_answers_rate_limited_not_quota(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(ask(100, day=10_000, tpm=150))
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(ask(100, day=10_000, tpm=150))
    assert not isinstance(caught.value, QuotaExceeded)


async def test_a_budget_is_exact_under_200_concurrent_admissions(make_limiter: LimiterFactory) -> None:
    one = await make_limiter()
    # With Redis, a second limiter on the same keys is a second replica; the memory limiter is one process's.
    two = one if isinstance(one, MemoryLimiter) else await make_limiter()

    async def attempt(i: int) -> bool:
        while True:
            try:
                await (one if i % 2 else two).admit(ask(7, day=700))
            except QuotaExceeded:
                return False
            except LimiterUnavailable:  # a loaded machine can miss the Redis deadline: the client retries the 503
                continue
            return True

    results = await asyncio.gather(*(attempt(i) for i in range(200)))
    assert sum(results) == 100


async def test_settle_is_idempotent_for_budgets(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    granted = await limiter.admit(ask(500, day=1000))
    await limiter.settle(granted, 0)
    await limiter.settle(dataclasses.replace(granted, settled=False), 0)  # a replayed settle refunds nothing more
    await limiter.admit(ask(1000, day=1000))
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ask(1, day=1000))


async def test_budgets_fail_closed_while_redis_is_down(make_replica_own_redis: LimiterFactory, own_redis: Any) -> None:
    limiter = await make_replica_own_redis()
    await limiter.admit(ask(1, day=1000))
    own_redis.stop()
    with pytest.raises(LimiterUnavailable):  # fail_open tenant, but a quota cannot be checked without Redis
        await limiter.admit(ask(1, day=1000))
    await limiter.admit(ask(1))  # the same tenant without a budget still fails open
