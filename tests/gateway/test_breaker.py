"""The one circuit breaker, on a stepped clock: as routing drives it (per worker), and as the Redis limiter does."""

from __future__ import annotations

import logging

import pytest

from sparsegate.gateway.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def redis_breaker(failures: int, reset_s: float, clock: FakeClock) -> CircuitBreaker:
    """Built as `RedisLimiter` builds it."""
    return CircuitBreaker(
        failures, reset_s, clock=clock, name="redis limiter", guards="Redis", late_success_closes=True
    )


# -- as routing drives it: allows / claim_trial / record_neutral --------------------------------------------------


def test_closed_until_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(3, 10.0, FakeClock())
    b.record_failure()
    b.record_failure()
    b.record_success()  # not consecutive any more
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allows()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allows()


def test_open_then_half_open_after_open_s_then_closed_on_success() -> None:
    clock = FakeClock()
    b = CircuitBreaker(1, 10.0, clock)
    b.record_failure()
    assert b.reopens_in() == 10.0
    clock.now += 9.9
    assert b.state is BreakerState.OPEN
    b.record_success()  # a late success while open changes nothing
    assert b.state is BreakerState.OPEN
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN
    assert b.reopens_in() == 0.0
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.failures == 0


def test_half_open_lets_one_trial_through() -> None:
    clock = FakeClock()
    b = CircuitBreaker(2, 5.0, clock)
    b.record_failure()
    b.record_failure()
    clock.now += 5.0
    assert b.allows()
    b.claim_trial()
    assert not b.allows()  # the trial is out
    b.record_neutral()  # the client left: nothing learned, the slot is free again
    assert b.allows()


def test_half_open_failure_reopens_for_another_period() -> None:
    clock = FakeClock()
    b = CircuitBreaker(2, 5.0, clock)
    b.record_failure()
    b.record_failure()
    clock.now += 5.0
    b.claim_trial()
    b.record_failure()  # one failure suffices in half-open
    assert b.state is BreakerState.OPEN
    assert b.reopens_in() == 5.0
    clock.now += 5.0
    assert b.state is BreakerState.HALF_OPEN


def test_failures_while_open_do_not_extend_it() -> None:
    clock = FakeClock()
    b = CircuitBreaker(1, 5.0, clock)
    b.record_failure()
    clock.now += 4.0
    b.record_failure()
    clock.now += 1.0
    assert b.state is BreakerState.HALF_OPEN


def test_closed_attribute_mirrors_the_state() -> None:
    clock = FakeClock()
    b = CircuitBreaker(1, 5.0, clock)
    assert b.closed
    b.record_failure()
    assert not b.closed
    clock.now += 5.0
    assert b.state is BreakerState.HALF_OPEN and not b.closed
    b.record_success()
    assert b.closed


# -- as the Redis limiter drives it: try_acquire ------------------------------------------------------------------


def test_opens_after_consecutive_failures_only() -> None:
    breaker = redis_breaker(3, 2.0, FakeClock(100.0))
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.try_acquire()


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = FakeClock(100.0)
    breaker = redis_breaker(1, 2.0, clock)
    breaker.record_failure()
    assert breaker.reopens_in() == 2.0
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_acquire()  # the probe
    assert not breaker.try_acquire()  # everyone else waits for it
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.try_acquire()


def test_failed_probe_reopens_for_another_period() -> None:
    clock = FakeClock(100.0)
    breaker = redis_breaker(3, 2.0, clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 2.0
    assert breaker.try_acquire()
    breaker.record_failure()  # one failure is enough in half-open
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.9
    assert not breaker.try_acquire()
    clock.now += 0.1
    assert breaker.try_acquire()


def test_a_probe_that_never_reports_does_not_block_forever() -> None:
    clock = FakeClock(100.0)
    breaker = redis_breaker(1, 2.0, clock)
    breaker.record_failure()
    clock.now += 2.0
    assert breaker.try_acquire()  # its caller was cancelled and never reports
    clock.now += 1.0
    assert not breaker.try_acquire()
    clock.now += 1.0
    assert breaker.try_acquire()


def test_late_failures_while_open_do_not_extend_it() -> None:
    clock = FakeClock(100.0)
    breaker = redis_breaker(1, 2.0, clock)
    breaker.record_failure()
    clock.now += 1.5
    breaker.record_failure()  # a call sent before it opened
    clock.now += 0.5
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_success_while_open_closes_when_asked_to() -> None:
    clock = FakeClock(100.0)
    breaker = redis_breaker(1, 2.0, clock)
    breaker.record_failure()
    clock.now += 1.0
    breaker.record_success()  # Redis answered a call that queued before the breaker opened
    assert breaker.state is BreakerState.CLOSED and breaker.closed
    assert breaker.try_acquire()


def test_transitions_are_logged_when_named(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(100.0)
    breaker = redis_breaker(2, 2.0, clock)
    with caplog.at_level(logging.WARNING, logger="sparsegate.gateway.breaker"):
        breaker.record_failure()
        breaker.record_failure()
        clock.now += 2.0
        breaker.record_success()
        breaker.record_success()  # already closed: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "redis limiter: breaker open for 2s after 2 failure(s)",
        "redis limiter: breaker closed, Redis answers again",
    ]


def test_unnamed_breakers_stay_quiet(caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker(1, 5.0, FakeClock())
    with caplog.at_level(logging.DEBUG, logger="sparsegate.gateway.breaker"):
        b.record_failure()
    assert caplog.records == []
