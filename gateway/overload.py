"""Overload: measure our own event loop's lag, keep deadlines fair to the workers, and shed load early.

- `LoopMonitor` ticks every `interval_s` with a plain loop callback; how late each tick runs is lag the process
  itself caused. `lag_total` accumulates it (for fair deadlines), `lag_recent` follows the latest ticks (for
  shedding).
- `FairDeadline` is `asyncio.timeout` in *fair time*: wall time minus our own lag over the same interval. When its
  timer fires it first checks how much of the wait was ours and re-arms for the remainder, so a worker is never
  timed out (and blamed, breaker and all) because this process was too busy to read its answer. It is also re-armable
  (`reset`), which makes it the per-stream watchdog: one timer per stream instead of a timeout scope per event.
- `Shedder` bounds this process's in-flight requests and refuses new ones while the loop lags: a 503 with
  `retry-after`, before admission (nothing charged), decided in microseconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from types import TracebackType

from sparsegate.gateway.errors import Overloaded

Clock = Callable[[], float]


class LoopMonitor:
    """The event loop's lag, sampled by a callback scheduled every `interval_s` (no task, no sleep)."""

    def __init__(self, interval_s: float = 0.01, clock: Clock = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.lag_total = 0.0  # seconds of lag since start
        self.lag_recent = 0.0  # the latest tick's lag, or half the previous figure if that is more
        self._due: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = self.clock() + self.interval_s
        self._handle = loop.call_later(self.interval_s, self.tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = None

    def tick(self) -> None:
        now = self.clock()
        if self._due is not None:
            late = max(0.0, now - self._due)
            self.lag_total += late
            # Up at once, down by half a tick: one stall sheds for a few ticks, a sustained lag keeps shedding.
            self.lag_recent = max(late, self.lag_recent / 2)
        self._due = now + self.interval_s
        if self._handle is not None:
            self._handle = asyncio.get_running_loop().call_later(self.interval_s, self.tick)

    def lag_until(self, now: float) -> float:
        """Total lag up to `now`, counting a tick that is overdue right now (the loop is behind at this moment)."""
        pending = 0.0 if self._due is None else max(0.0, now - self._due)
        return self.lag_total + pending

    def lag_now(self) -> float:
        """How far behind the loop has been running lately (for shedding)."""
        return self.lag_recent


class FairDeadline:
    """`async with FairDeadline(monitor, budget_s):` raises `TimeoutError` once `budget_s` of fair time has passed.

    `reset(budget_s)` starts a new budget from now (the stream watchdog re-arms after every event); `pause()` stops
    the clock (while we wait on the client rather than the worker). Resetting costs three assignments: the timer is
    only moved when it fires early, by re-arming for what is left.
    """

    __slots__ = ("_budget", "_cancelling", "_handle", "_lag0", "_loop", "_monitor", "_start", "_task", "expired")

    def __init__(self, monitor: LoopMonitor, budget_s: float) -> None:
        self._monitor = monitor
        self._budget = budget_s
        self._start = 0.0
        self._lag0 = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.expired = False

    def reset(self, budget_s: float) -> None:
        now = self._monitor.clock()
        self._start, self._lag0, self._budget = now, self._monitor.lag_until(now), budget_s
        if self._handle is None and self._loop is not None and not self.expired:
            self._arm(budget_s)

    def pause(self) -> None:
        self._budget = math.inf

    def fair_elapsed(self, now: float) -> float:
        return (now - self._start) - (self._monitor.lag_until(now) - self._lag0)

    def _arm(self, delay: float) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_at(self._loop.time() + max(0.0, delay), self._check)

    def _check(self) -> None:
        self._handle = None
        if math.isinf(self._budget):
            return  # paused: `reset` arms it again
        left = self._budget - self.fair_elapsed(self._monitor.clock())
        if left > 0:
            self._arm(left)
            return
        self.expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aenter__(self) -> FairDeadline:
        self._task = asyncio.current_task()
        if self._task is None:
            raise RuntimeError("FairDeadline must be used inside a task")
        self._loop = asyncio.get_running_loop()
        self._cancelling = self._task.cancelling()
        self.reset(self._budget)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None
        # Our cancel: take it back, and say what it was, unless someone else cancelled the task too.
        if (
            self.expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


class Shedder:
    """Bounds the requests this process serves at once, by count and by event-loop lag."""

    def __init__(self, monitor: LoopMonitor, *, max_in_flight: int, max_loop_lag_s: float) -> None:
        self.monitor = monitor
        self.max_in_flight = max_in_flight
        self.max_loop_lag_s = max_loop_lag_s
        self.in_flight = 0
        self.shed = 0

    def enter(self) -> None:
        """Take a slot or raise `Overloaded`; pair every successful call with one `leave`."""
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            raise Overloaded(
                f"The gateway is at capacity ({self.max_in_flight} requests in flight); please retry shortly.",
                retry_after_s=0.5,
            )
        lag = self.monitor.lag_now()
        if lag > self.max_loop_lag_s:
            self.shed += 1
            raise Overloaded(
                f"The gateway is overloaded (event loop {lag * 1000:.0f} ms behind); please retry shortly.",
                retry_after_s=min(5.0, max(0.25, 4 * lag)),
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
