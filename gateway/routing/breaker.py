"""A per-worker circuit breaker: closed → open → half-open → closed.

- closed: traffic flows; `failure_threshold` consecutive failures (requests or probes) open it.
- open: no traffic for `open_s`; late results of requests sent before it opened change nothing.
- half-open: one request may go through as a trial, and probes keep running; the first success closes the
  breaker, the first failure opens it again for another `open_s`.

Time comes from an injected clock so tests can step it instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

Clock = Callable[[], float]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = ("_clock", "_opened_at", "_state", "_trial_out", "closed", "failure_threshold", "failures", "open_s")

    def __init__(self, failure_threshold: int, open_s: float, clock: Clock = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.failures = 0
        self._clock = clock
        self._state = BreakerState.CLOSED
        self.closed = True  # the state is CLOSED: a plain attribute, read on every routing decision
        self._opened_at = 0.0
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        # open → half-open is a matter of time, so it is evaluated lazily rather than by a timer.
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_s:
            self._state = BreakerState.HALF_OPEN
            self._trial_out = False
        return self._state

    def allows_request(self) -> bool:
        if self.closed:
            return True
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_out)

    def reopens_in(self) -> float:
        """Seconds until an open breaker turns half-open; 0 when it is not open."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock())

    def on_dispatch(self) -> None:
        """A request was sent; in half-open it is the one trial, so no other request follows until it ends."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_out = True

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return
        self._state = BreakerState.CLOSED
        self.closed = True
        self.failures = 0
        self._trial_out = False

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return
        self.failures += 1
        if state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._open()

    def record_neutral(self) -> None:
        """A request ended saying nothing about the worker (the client went away): free the trial slot."""
        self._trial_out = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self.closed = False
        self._opened_at = self._clock()
        self._trial_out = False
