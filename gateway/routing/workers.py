"""One `Worker` per (pool, worker URL): what the gateway knows about it right now."""

from __future__ import annotations

from ..breaker import BreakerState, CircuitBreaker


class Worker:
    """Live state of one SGLang worker.

    `in_flight` counts this gateway's requests on it (incremented by `Router.pick_worker`, decremented by
    `Router.release`). `polled_load` is the worker's own count of running + queued requests from its last
    `/get_load` or `/metrics` poll, which also sees other replicas' traffic; `load` combines both.
    """

    __slots__ = ("breaker", "extra_load", "in_flight", "load_polled_at", "picks", "polled_load", "pool", "url")

    def __init__(self, url: str, pool: str, breaker: CircuitBreaker) -> None:
        self.url = url
        self.pool = pool
        self.breaker = breaker
        self.in_flight = 0
        self.picks = 0
        self.polled_load: int | None = None
        self.load_polled_at: float | None = None
        self.extra_load = 0

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
        return self.breaker.allows()

    @property
    def load(self) -> int:
        """Requests on the worker: the polled figure plus what this gateway sent or finished since the poll.

        The poll already counted our requests in flight when it was taken, so the figure is kept as
        `extra_load`, what it saw beyond ours (other replicas' traffic), on top of our live in-flight count;
        this equals polled + (in-flight now - in-flight at the poll), and is never below our own count.
        """
        return self.in_flight + self.extra_load

    def set_polled_load(self, load: int | None, at: float) -> None:
        self.polled_load = load
        self.load_polled_at = at
        self.extra_load = 0 if load is None else max(0, load - self.in_flight)

    def __repr__(self) -> str:
        return f"Worker({self.url!r}, pool={self.pool!r}, state={self.state}, in_flight={self.in_flight})"
