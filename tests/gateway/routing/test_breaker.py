"""Circuit breaker transitions, on a fake clock."""

from __future__ import annotations

from sparsegate.gateway.routing.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_closed_until_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(3, 10.0, FakeClock())
    b.record_failure()
    b.record_failure()
    b.record_success()  # not consecutive any more
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allows_request()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allows_request()


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
    assert b.allows_request()
    b.on_dispatch()
    assert not b.allows_request()  # the trial is out
    b.record_neutral()  # the client left: nothing learned, the slot is free again
    assert b.allows_request()


def test_half_open_failure_reopens_for_another_period() -> None:
    clock = FakeClock()
    b = CircuitBreaker(2, 5.0, clock)
    b.record_failure()
    b.record_failure()
    clock.now += 5.0
    b.on_dispatch()
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
