"""Loop lag, fair deadlines and the shedder, on a fake clock: time is stepped, never slept."""

from __future__ import annotations

import asyncio

import pytest

from sparsegate.gateway.errors import Overloaded
from sparsegate.gateway.overload import FairDeadline, LoopMonitor, Shedder


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_monitor_counts_how_late_each_tick_runs() -> None:
    clock = FakeClock()
    monitor = LoopMonitor(interval_s=0.01, clock=clock)
    monitor._due = clock.now + 0.01
    clock.now += 0.01
    monitor.tick()  # on time
    assert monitor.lag_total == 0.0
    clock.now += 0.01 + 0.25  # the loop was blocked for 250 ms
    assert monitor.lag_until(clock.now) == pytest.approx(0.25), "a tick overdue right now counts already"
    monitor.tick()
    assert monitor.lag_total == pytest.approx(0.25)
    assert monitor.lag_now() == pytest.approx(0.25)
    clock.now += 0.01
    monitor.tick()
    assert monitor.lag_now() == pytest.approx(0.125), "lag decays by half a tick once the loop keeps up"


async def test_fair_deadline_does_not_count_our_own_lag() -> None:
    clock = FakeClock()
    monitor = LoopMonitor(clock=clock)
    async with FairDeadline(monitor, 1.0) as deadline:
        clock.now += 1.5
        monitor.lag_total += 1.0  # a full second of it was this process being busy
        deadline._check()
        assert not deadline.expired
        assert deadline.fair_elapsed(clock.now) == pytest.approx(0.5)
        await asyncio.sleep(0)  # not cancelled


async def test_fair_deadline_fires_on_fair_time_as_a_timeout_error() -> None:
    clock = FakeClock()
    monitor = LoopMonitor(clock=clock)
    with pytest.raises(TimeoutError):  # noqa: PT012 (the deadline is the block)
        async with FairDeadline(monitor, 1.0) as deadline:
            clock.now += 1.2
            monitor.lag_total += 0.1
            deadline._check()
            assert deadline.expired
            await asyncio.sleep(0)
    assert asyncio.current_task() is not None and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_watchdog_reset_and_pause() -> None:
    clock = FakeClock()
    monitor = LoopMonitor(clock=clock)
    async with FairDeadline(monitor, 1.0) as watchdog:
        clock.now += 0.9
        watchdog.reset(1.0)  # an event arrived: a new budget from now
        clock.now += 0.9
        watchdog._check()
        assert not watchdog.expired
        watchdog.pause()  # waiting on the client, not the worker
        clock.now += 100
        watchdog._check()
        assert not watchdog.expired


async def test_someone_elses_cancel_is_not_turned_into_a_timeout() -> None:
    clock = FakeClock()
    monitor = LoopMonitor(clock=clock)
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(asyncio.CancelledError):  # noqa: PT012 (the deadline is the block)
        async with FairDeadline(monitor, 1.0) as deadline:
            task.cancel()  # e.g. the client left
            clock.now += 2
            deadline._check()
            await asyncio.sleep(0)
    assert task.uncancel() == 0


def test_shedder_bounds_in_flight_and_lag() -> None:
    clock = FakeClock()
    monitor = LoopMonitor(clock=clock)
    shedder = Shedder(monitor, max_in_flight=2, max_loop_lag_s=0.1)
    shedder.enter()
    shedder.enter()
    with pytest.raises(Overloaded) as full:
        shedder.enter()
    assert full.value.status_code == 503 and full.value.error_type == "server_error"
    assert {"retry-after", "retry-after-ms"} <= set(full.value.headers())
    shedder.leave()
    monitor.lag_recent = 0.5
    with pytest.raises(Overloaded, match="event loop"):
        shedder.enter()
    monitor.lag_recent = 0.0
    shedder.enter()
    assert shedder.in_flight == 2 and shedder.shed == 2
