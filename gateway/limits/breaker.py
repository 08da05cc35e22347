"""The circuit breaker around Redis: closed → open → half-open → closed.

- closed: every call goes to Redis; `failures` consecutive failures open the breaker.
- open: no call goes to Redis for `reset_s`; the limiter answers by each tenant's failure policy at once.
- half-open: one call goes through as a probe (an admission, or the heartbeat when traffic is idle). Success
  closes the breaker, failure opens it for another `reset_s`. A probe that never reports (its task was cancelled)
  stops blocking others after `reset_s`.

So Redis coming back is noticed within `reset_s` without a restart, and a dead Redis costs each request nothing
while open. Time comes from an injected clock so tests can step it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(self, failures: int, reset_s: float, *, clock: Clock = time.monotonic) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_at = None
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to Redis now. In half-open, granting the call makes it the probe; the caller
        must report its outcome with `record_success` or `record_failure`."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self._clock()
        if self._probe_at is not None and now - self._probe_at < self.reset_s:
            return False
        self._probe_at = now
        return True

    def record_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            log.warning("redis limiter: breaker closed, Redis answers again")
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_at = None

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return  # a late result of a call sent before the breaker opened
        self._failures += 1
        if state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            log.warning("redis limiter: breaker open for %.3gs after %d failure(s)", self.reset_s, self._failures)
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probe_at = None

    def retry_in(self) -> float:
        """Seconds until the next probe may go; 0 unless open."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_s - self._clock())
