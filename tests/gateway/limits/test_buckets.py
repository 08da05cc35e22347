"""The shared bucket math: which buckets apply, refill, shares, and the rejection that names the right bucket."""

from __future__ import annotations

import pytest

from sparsegate.gateway.limits.base import go_duration
from sparsegate.gateway.limits.buckets import Observation, plan, refill, rejection, share
from sparsegate.gateway.settings import Limits
from tests.gateway.limits.support import admission, parse_go_duration


def test_plan_puts_the_lease_registry_first_when_settling_has_work() -> None:
    assert [s.name for s in plan(admission())] == []
    assert [s.name for s in plan(admission(rpm=5))] == ["rpm"]
    assert [s.name for s in plan(admission(rpm=5, tpm=10))] == ["leases", "rpm", "tpm"]
    specs = plan(admission(model="m", max_concurrent=3, model_limits=Limits(rpm=1, max_concurrent=1)))
    assert [(s.name, s.limit) for s in specs] == [("leases", 3), ("m:m:rpm", 1), ("m:m:leases", 1)]
    # A registry without a cap when only the model has a concurrency limit.
    specs = plan(admission(model="m", model_limits=Limits(max_concurrent=2)))
    assert [(s.name, s.limit) for s in specs] == [("leases", 0), ("m:m:leases", 2)]


def test_refill_is_continuous_and_capped() -> None:
    assert refill(0.0, 10.0, 11.0, 60) == pytest.approx(1.0)
    assert refill(-30.0, 10.0, 40.0, 60) == pytest.approx(0.0)  # debt is paid back at the same rate
    assert refill(59.0, 10.0, 1000.0, 60) == 60.0
    assert refill(5.0, 10.0, 9.0, 60) == 5.0  # a clock going backwards refills nothing


def test_share_floors_but_keeps_every_limit_usable() -> None:
    limits = Limits(rpm=20, tpm=1000, max_concurrent=3, max_tokens=77)
    assert share(limits, 3) == Limits(rpm=6, tpm=333, max_concurrent=1, max_tokens=77)
    assert share(Limits(rpm=2), 5).rpm == 1
    assert share(Limits(), 4) == Limits()
    assert share(limits, 0) == limits


def test_rejection_names_the_bucket_that_keeps_the_request_out_longest() -> None:
    specs = plan(admission(rpm=60, tpm=600, tokens=100))  # leases, rpm, tpm
    seen = [Observation(0.0), Observation(0.5), Observation(40.0)]
    err = rejection(specs, seen)
    # rpm needs 0.5 request at 1/s = 0.5 s; tpm needs 60 tokens at 10/s = 6 s.
    assert err.error_type == "tokens"
    assert err.retry_after_s == pytest.approx(6.0)
    assert "Used 560, Requested 100. Please try again in 6s." in err.message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
    ],
)
def test_go_durations_round_trip(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    if seconds >= 0.001:
        assert parse_go_duration(text) == pytest.approx(seconds, abs=0.001)
