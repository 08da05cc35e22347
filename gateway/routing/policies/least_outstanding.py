"""Least outstanding requests: the worker with the fewest of this gateway's requests in flight.

It sees only this replica's traffic, which makes it exact and free of polling lag but blind to other replicas;
`power_of_two` adds the workers' own load figures. Ties rotate, so an idle pool is filled round-robin rather
than always starting at the first worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..workers import Worker
from .base import Outcome


class LeastOutstanding:
    name = "least_outstanding"

    def __init__(self, members: Sequence[Worker] = ()) -> None:
        self._turn = 0

    def select(self, workers: Sequence[Worker], key: str) -> Worker:
        n = len(workers)
        start = self._turn % n
        self._turn += 1
        best = workers[start]
        for i in range(1, n):
            w = workers[(start + i) % n]
            if w.in_flight < best.in_flight:
                best = w
        return best

    def observe(self, worker: Worker, outcome: Outcome, latency_s: float | None = None) -> None:
        # In-flight counts are kept by the router itself; nothing to learn from outcomes.
        return None
