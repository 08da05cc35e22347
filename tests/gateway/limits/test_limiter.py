"""The shared suite: every test runs against MemoryLimiter and RedisLimiter (on a real redis-server).

Limits are small and refill is slow compared with a test's run time, so "exact" assertions hold; the few sleeps
wait for a refill the limiter itself announced, and nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from sparsegate.gateway.errors import RateLimited
from sparsegate.gateway.limits import AdmissionRequest, Limiter, Reservation
from sparsegate.gateway.settings import Limits
from tests.gateway.limits.conftest import LimiterFactory
from tests.gateway.limits.support import admission, parse_go_duration


async def admit_all(limiter: Limiter, requests: list[AdmissionRequest]) -> tuple[list[Reservation], list[RateLimited]]:
    """Admit all at once; every outcome must be an admission or a 429."""
    results = await asyncio.gather(*(limiter.admit(r) for r in requests), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Reservation)]
    rejected = [r for r in results if isinstance(r, RateLimited)]
    assert len(admitted) + len(rejected) == len(results), [r for r in results if isinstance(r, BaseException)]
    return admitted, rejected


async def test_rpm_is_exact_under_200_concurrent_admissions(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    admitted, rejected = await admit_all(limiter, [admission(rpm=30) for _ in range(200)])
    assert len(admitted) == 30
    assert len(rejected) == 170
    assert {e.kind for e in rejected} == {"requests"}
    assert all(e.can_ever_fit and e.retry_after_s and 0 < e.retry_after_s <= 2.0 for e in rejected)


async def test_rpm_rejection_names_the_limit_and_the_real_wait(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    for _ in range(120):
        await limiter.admit(admission(rpm=120))
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(rpm=120))
    err = caught.value
    assert err.status_code == 429
    assert err.error_type == "requests"
    assert err.error_code == "rate_limit_exceeded"
    assert "requests per min (RPM) on tenant 'acme': Limit 120, Used 120, Requested 1." in err.message
    assert "Please try again in " in err.message
    # 120 rpm refills 2 requests per second: one request is at most 0.5 s away.
    assert err.retry_after_s is not None
    assert 0 < err.retry_after_s <= 0.5
    headers = err.headers()
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after-ms"]) == math.ceil(err.retry_after_s * 1000)
    assert headers["retry-after"] == "1"
    # Waiting exactly as long as announced is enough.
    await asyncio.sleep(err.retry_after_s + 0.02)
    await limiter.admit(admission(rpm=120))


async def test_tpm_retry_after_matches_the_refill_rate(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(admission(tpm=600, tokens=600))
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(tpm=600, tokens=5))
    err = caught.value
    assert err.error_type == "tokens"
    assert "tokens per min (TPM) on tenant 'acme': Limit 600, Used 600, Requested 5." in err.message
    # 600 tpm refills 10 tokens per second: 5 tokens are at most 0.5 s away.
    assert err.retry_after_s is not None
    assert 0.4 < err.retry_after_s <= 0.5
    await asyncio.sleep(err.retry_after_s + 0.02)
    await limiter.admit(admission(tpm=600, tokens=5))


async def test_tokens_are_reserved_then_refunded_on_settle(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    first = await limiter.admit(admission(tpm=1000, tokens=800))
    assert first.state.tokens is not None
    assert 200 <= first.state.tokens.remaining <= 205  # 1000 tpm refills ~17 tokens a second
    with pytest.raises(RateLimited):
        await limiter.admit(admission(tpm=1000, tokens=400))

    await limiter.settle(first, used_tokens=300)  # 500 of the 800 come back
    second = await limiter.admit(admission(tpm=1000, tokens=650))
    assert second.state.tokens is not None
    assert 50 <= second.state.tokens.remaining <= 60
    # Settling twice refunds once.
    await limiter.settle(first, used_tokens=0)
    with pytest.raises(RateLimited):
        await limiter.admit(admission(tpm=1000, tokens=200))


async def test_refund_never_overfills_the_bucket(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    r = await limiter.admit(admission(tpm=1000, tokens=100))
    await limiter.settle(r, used_tokens=0)
    after = await limiter.admit(admission(tpm=1000, tokens=1))
    assert after.state.tokens is not None
    assert after.state.tokens.remaining == 999


async def test_usage_over_the_reservation_is_charged_as_debt(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    r = await limiter.admit(admission(tpm=1000, tokens=500))
    await limiter.settle(r, used_tokens=1500)  # 1000 more than reserved: the bucket goes to about -500
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(tpm=1000, tokens=1))
    err = caught.value
    assert err.headers()["x-ratelimit-remaining-tokens"] == "0"
    # 501 tokens to refill at 1000/60 per second: about 30 s.
    assert err.retry_after_s is not None
    assert 29.0 < err.retry_after_s <= 30.06


async def test_request_larger_than_the_bucket_can_never_fit(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(rpm=10, tpm=1000, tokens=1001))
    err = caught.value
    assert err.error_type == "tokens"
    assert not err.can_ever_fit
    assert "Request too large for tokens per min (TPM) on tenant 'acme': Limit 1000, Requested 1001." in err.message
    assert "retrying cannot help" in err.message
    headers = err.headers()
    assert headers["x-should-retry"] == "false"
    assert "retry-after" not in headers
    # Nothing was charged: the request bucket is still full.
    assert headers["x-ratelimit-remaining-requests"] == "10"


async def test_admission_charges_all_buckets_or_none(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(admission(rpm=10, tpm=100, tokens=100))
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(rpm=10, tpm=100, tokens=50))
    assert caught.value.error_type == "tokens"
    assert caught.value.headers()["x-ratelimit-remaining-requests"] == "9"  # the rejected request cost nothing


async def test_concurrency_slots_come_back_on_settle(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    first = await limiter.admit(admission(max_concurrent=2))
    await limiter.admit(admission(max_concurrent=2))
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(max_concurrent=2))
    err = caught.value
    assert err.error_type == "requests"
    assert "concurrent requests on tenant 'acme': Limit 2, In flight 2, Requested 1." in err.message
    assert err.retry_after_s is not None
    assert 0 < err.retry_after_s <= 1.0

    await limiter.settle(first, used_tokens=1)
    await limiter.settle(first, used_tokens=1)  # idempotent: frees one slot, not two
    await limiter.admit(admission(max_concurrent=2))
    with pytest.raises(RateLimited):
        await limiter.admit(admission(max_concurrent=2))


async def test_concurrency_is_exact_under_concurrent_admissions(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    admitted, _ = await admit_all(limiter, [admission(max_concurrent=5) for _ in range(50)])
    assert len(admitted) == 5
    await asyncio.gather(*(limiter.settle(r, used_tokens=1) for r in admitted))
    admitted, _ = await admit_all(limiter, [admission(max_concurrent=5) for _ in range(50)])
    assert len(admitted) == 5


async def test_unsettled_lease_expires_by_itself(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter(lease_ttl_s=0.3)
    lost = await limiter.admit(admission(max_concurrent=1, tpm=100, tokens=50))  # a crashed replica's request
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(max_concurrent=1))
    assert caught.value.retry_after_s is not None
    assert 0 < caught.value.retry_after_s <= 0.3  # the lease-based estimate
    await asyncio.sleep(0.35)
    holder = await limiter.admit(admission(max_concurrent=1))
    # A settle arriving after the lease expired frees nothing (the slot is someone else's now) and refunds nothing.
    await limiter.settle(lost, used_tokens=0)
    with pytest.raises(RateLimited):
        await limiter.admit(admission(max_concurrent=1))
    await limiter.settle(holder, used_tokens=0)
    await limiter.admit(admission(max_concurrent=1))


async def test_limits_per_tenant_and_model(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    small = Limits(rpm=2, tpm=100, max_concurrent=5)
    tenant = {"rpm": 5, "tpm": 10_000}
    for _ in range(2):
        await limiter.admit(admission(model="small", model_limits=small, **tenant))
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(model="small", model_limits=small, **tenant))
    assert "on tenant 'acme' and model 'small': Limit 2, Used 2" in caught.value.message
    # The headers show the tighter of the two buckets.
    assert caught.value.headers()["x-ratelimit-limit-requests"] == "2"

    # Other models only meet the tenant limit, which counted the two requests above.
    other = await limiter.admit(admission(model="big", **tenant))
    assert other.state.requests is not None
    assert other.state.requests.remaining == 2
    for _ in range(2):
        await limiter.admit(admission(model="big", **tenant))
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(model="big", **tenant))
    assert "on tenant 'acme': Limit 5" in caught.value.message

    # Model-level tokens and concurrency.
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(admission(model="small", model_limits=small, tokens=101, tpm=10_000))
    assert not caught.value.can_ever_fit
    one = Limits(max_concurrent=1)
    held = await limiter.admit(admission(model="solo", model_limits=one))
    with pytest.raises(RateLimited):
        await limiter.admit(admission(model="solo", model_limits=one))
    await limiter.admit(admission(model="duo", model_limits=one))
    await limiter.settle(held, used_tokens=1)
    await limiter.admit(admission(model="solo", model_limits=one))


async def test_tenants_do_not_share_buckets(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    await limiter.admit(admission(tenant="a", rpm=1))
    with pytest.raises(RateLimited):
        await limiter.admit(admission(tenant="a", rpm=1))
    await limiter.admit(admission(tenant="b", rpm=1))


async def test_headers_on_admission_use_go_durations(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    r = await limiter.admit(admission(rpm=60, tpm=6000, tokens=600))
    headers = r.state.headers()
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-ratelimit-limit-tokens"] == "6000"
    assert headers["x-ratelimit-remaining-tokens"] == "5400"
    # One request refills in 1 s at 60 rpm; 600 tokens in 6 s at 6000 tpm.
    assert 0.95 < parse_go_duration(headers["x-ratelimit-reset-requests"]) <= 1.0
    assert 5.95 < parse_go_duration(headers["x-ratelimit-reset-tokens"]) <= 6.0
    assert headers["x-ratelimit-reset-tokens"].endswith("s")
    assert not r.degraded


async def test_tenant_without_limits_is_admitted_without_state(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    r = await limiter.admit(admission(tokens=10**9))
    assert r.state.headers() == {}
    await limiter.settle(r, used_tokens=5)
    assert r.settled


async def test_settle_of_a_tenant_with_only_rpm_is_a_no_op(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter()
    r = await limiter.admit(admission(rpm=5))
    assert r.lease_id is None  # nothing to settle: the request bucket is never refunded
    await limiter.settle(r, used_tokens=5)
    assert r.state.requests is not None
    assert r.state.requests.remaining == 4
