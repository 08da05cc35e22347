"""The circuit breaker, one for every dependency the gateway calls: each worker, and Redis.

                failure_threshold consecutive failures
    +--------+ ---------------------------------------> +------+
    | CLOSED |                                          | OPEN | <---------------------+
    +--------+                                          +------+                       |
        ^                                                   |                          |
        |                                                   | open_s passed            |
        |                                                   v                          |
        |         the trial succeeds                  +-----------+   the trial fails  |
        +-------------------------------------------- | HALF_OPEN | -------------------+
                                                      +-----------+

- closed: every call goes through; `failure_threshold` consecutive failures open the breaker.
- open: no call goes through for `open_s`; late failures of calls sent before it opened change nothing (they would
  otherwise keep extending the open period).
- half-open: one call goes through as the trial (`try_acquire`, or `allows` then `claim_trial`). Success closes
  the breaker, failure opens it again for another `open_s`. A trial that ends saying nothing (`record_neutral`: the
  client went away) frees the slot at once; one that never reports (its task was cancelled) stops blocking others
  after `open_s`.

So a dependency coming back is noticed within `open_s` without a restart, and a dead one costs each call nothing
while open. open → half-open is a matter of time, evaluated lazily in `state` rather than by a timer; time comes
from an injected clock so tests can step it instead of sleeping.
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


class CircuitBreaker:
    """closed → open → half-open → closed, on an injected clock.

    `failure_threshold` and `open_s` are plain attributes a config reload may change in place. `closed` mirrors
    `state is CLOSED` as a plain attribute, because routing reads it on every decision.

    `name`, when set, logs each open and close at WARNING as "<name>: breaker ..."; `guards` names what the
    breaker stands in front of, for the close message ("..., Redis answers again").

    `late_success_closes` decides what a success reported while OPEN does. Routing leaves it False: a worker's
    success then is a request sent before it opened, which proves little about a worker that just failed
    `failure_threshold` times (it may be up for some requests and not others), so the open period stands and a
    half-open trial or probe decides. The Redis limiter sets it True: Redis is one shared server, and any answer
    from it (a call that queued before the breaker opened) shows it is back, so every later request stops paying
    the failure policy at once.
    """

    __slots__ = (
        "_clock",
        "_late_success_closes",
        "_opened_at",
        "_state",
        "_trial_at",
        "closed",
        "failure_threshold",
        "failures",
        "guards",
        "name",
        "open_s",
    )

    def __init__(
        self,
        failure_threshold: int,
        open_s: float,
        clock: Clock = time.monotonic,
        *,
        name: str | None = None,
        guards: str | None = None,
        late_success_closes: bool = False,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.failures = 0
        self.name = name
        self.guards = guards
        self.closed = True  # the state is CLOSED: a plain attribute, read on every routing decision
        self._clock = clock
        self._late_success_closes = late_success_closes
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._trial_at: float | None = None  # when the half-open trial went out; None while the slot is free

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_s:
            self._state = BreakerState.HALF_OPEN
            self._trial_at = None
        return self._state

    # -- asking ---------------------------------------------------------------------------------------------------

    def allows(self) -> bool:
        """Whether a call may go now, claiming nothing: closed, or half-open with the trial slot free."""
        if self.closed:
            return True
        return self.state is BreakerState.HALF_OPEN and self._trial_free(self._clock())

    def claim_trial(self) -> None:
        """A call was sent; in half-open it is the one trial, so no other call follows until it reports."""
        if not self.closed and self.state is BreakerState.HALF_OPEN:
            self._trial_at = self._clock()

    def try_acquire(self) -> bool:
        """`allows` and `claim_trial` at once: whether a call may go now, and in half-open that call is the trial.

        The caller must then report its outcome with `record_success`, `record_failure` or `record_neutral`."""
        if self.closed:
            return True
        if self.state is not BreakerState.HALF_OPEN:
            return False
        now = self._clock()
        if not self._trial_free(now):
            return False
        self._trial_at = now
        return True

    def reopens_in(self) -> float:
        """Seconds until an open breaker turns half-open; 0 when it is not open."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock())

    # -- reporting ------------------------------------------------------------------------------------------------

    def record_success(self) -> None:
        if self.closed:
            self.failures = 0
            return
        if self.state is BreakerState.OPEN and not self._late_success_closes:
            return  # a late result of a call sent before the breaker opened
        if self.name is not None:
            if self.guards is None:
                log.warning("%s: breaker closed", self.name)
            else:
                log.warning("%s: breaker closed, %s answers again", self.name, self.guards)
        self._state = BreakerState.CLOSED
        self.closed = True
        self.failures = 0
        self._trial_at = None

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return  # a late result of a call sent before the breaker opened
        self.failures += 1
        if state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            if self.name is not None:
                log.warning("%s: breaker open for %.3gs after %d failure(s)", self.name, self.open_s, self.failures)
            self._state = BreakerState.OPEN
            self.closed = False
            self._opened_at = self._clock()
            self._trial_at = None

    def record_neutral(self) -> None:
        """A call ended saying nothing about the dependency (the client went away): free the trial slot."""
        self._trial_at = None

    def _trial_free(self, now: float) -> bool:
        return self._trial_at is None or now - self._trial_at >= self.open_s
