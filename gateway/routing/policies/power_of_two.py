"""Power of two choices: sample two workers at random and take the less loaded.

Load is `Worker.load` (polled running + queued requests, corrected by this gateway's in-flight changes since
the poll). Two random choices avoid the herd that "always the least loaded" causes when several gateway
replicas act on the same stale poll, while keeping the maximum load within O(log log n) of the mean.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..workers import Worker
from .base import Outcome


class PowerOfTwo:
    name = "power_of_two"

    def __init__(self, members: Sequence[Worker] = (), rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], key: str) -> Worker:
        n = len(workers)
        if n == 1:
            return workers[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = workers[i], workers[j]
        # Ties go to the one with fewer of our own requests: that figure is never stale.
        if (b.load, b.in_flight) < (a.load, a.in_flight):
            return b
        return a

    def observe(self, worker: Worker, outcome: Outcome, latency_s: float | None = None) -> None:
        return None
