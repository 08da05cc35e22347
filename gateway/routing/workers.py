"""One `Worker` per (pool, worker URL): what the gateway knows about it right now."""

from __future__ import annotations

from .breaker import BreakerState, CircuitBreaker


class Worker:
    """Live state of one SGLang worker.

    `in_flight` counts this gateway's requests on it (incremented by `Router.pick_worker`, decremented by
    `Router.release`). `polled_load` is the worker's own count of running + queued requests from its last
    `/get_load` or `/metrics` poll, which also sees other replicas' traffic; `load` combines both.
    """

    __slots__ = ("_in_flight_at_poll", "breaker", "in_flight", "load_polled_at", "picks", "polled_load", "pool", "url")

    def __init__(self, url: str, pool: str, breaker: CircuitBreaker) -> None:
        self.url = url
        self.pool = pool
        self.breaker = breaker
        self.in_flight = 0
        self.picks = 0
        self.polled_load: int | None = None
        self.load_polled_at: float | None = None
        self._in_flight_at_poll = 0

    @property
    def state(self) -> str:
        """The breaker state as a plain string ("closed", "open", "half_open"), for metrics and logs."""
        return self.breaker.state.value

    @property
    def healthy(self) -> bool:
        return self.breaker.state is BreakerState.CLOSED

    @property
    def eligible(self) -> bool:
        """May take a request now: breaker closed, or half-open with its one trial still free."""
        return self.breaker.allows_request()

    @property
    def load(self) -> int:
        """Requests on the worker: the polled figure plus what this gateway sent or finished since the poll.

        The poll already includes our requests that were in flight when it was taken, so only the change
        since then is added; never less than our own in-flight count.
        """
        if self.polled_load is None:
            return self.in_flight
        return max(self.in_flight, self.polled_load + self.in_flight - self._in_flight_at_poll)

    def set_polled_load(self, load: int | None, at: float) -> None:
        self.polled_load = load
        self.load_polled_at = at
        self._in_flight_at_poll = self.in_flight

    def __repr__(self) -> str:
        return f"Worker({self.url!r}, pool={self.pool!r}, state={self.state}, in_flight={self.in_flight})"
