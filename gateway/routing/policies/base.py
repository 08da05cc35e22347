"""The one interface every balancing policy implements.

`select` gets the workers eligible right now (healthy, not excluded by a retry; never empty) and the request's
affinity key, and returns one of them. `observe` hears how a request sent to a worker ended, for policies that
learn from outcomes. Policies are built per pool with the pool's full membership, so that a worker going
unhealthy and coming back keeps its place (e.g. on the hash ring).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from ..workers import Worker

Outcome = Literal["ok", "client_error", "connect_error", "upstream_error", "timeout", "cancelled", "busy"]


class Policy(Protocol):
    name: str

    def select(self, workers: Sequence[Worker], key: str) -> Worker: ...

    def observe(self, worker: Worker, outcome: Outcome, latency_s: float | None = None) -> None: ...
