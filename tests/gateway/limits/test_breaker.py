"""The Redis circuit breaker, on a stepped clock."""

from __future__ import annotations

from sparsegate.gateway.limits.breaker import Breaker, BreakerState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    breaker = Breaker(3, 2.0, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = Clock()
    breaker = Breaker(1, 2.0, clock=clock)
    breaker.record_failure()
    assert breaker.retry_in() == 2.0
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for it
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_failed_probe_reopens_for_another_period() -> None:
    clock = Clock()
    breaker = Breaker(3, 2.0, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 2.0
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough in half-open
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_a_probe_that_never_reports_does_not_block_forever() -> None:
    clock = Clock()
    breaker = Breaker(1, 2.0, clock=clock)
    breaker.record_failure()
    clock.now += 2.0
    assert breaker.allow()  # its caller was cancelled and never reports
    clock.now += 1.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_late_failures_while_open_do_not_extend_it() -> None:
    clock = Clock()
    breaker = Breaker(1, 2.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.5
    breaker.record_failure()  # a call sent before it opened
    clock.now += 0.5
    assert breaker.state is BreakerState.HALF_OPEN
