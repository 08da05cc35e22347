"""The fair queue's Prometheus series, registered in the gateway's registry (labels: configured pools and tenants).

- `sparsegate_queue_depth{pool, tenant}`: requests waiting now (summed over processes);
- `sparsegate_queue_wait_seconds{pool, tenant, outcome}`: how long each waiter waited, by how the wait ended
  (granted, timeout, cancelled);
- `sparsegate_queue_shed{pool, tenant, reason}`: requests refused by the queue itself (its bound was reached).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class QueueMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge(
            "sparsegate_queue_depth", "Requests waiting in the gateway's fair queue.", ["pool", "tenant"],
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.wait = Histogram(
            "sparsegate_queue_wait_seconds", "Time requests waited in the gateway's fair queue.",
            ["pool", "tenant", "outcome"], buckets=WAIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.refused = Counter(
            "sparsegate_queue_shed", "Requests refused by the fair queue's bound.", ["pool", "tenant", "reason"],
            registry=registry,
        )  # fmt: skip

    def enter(self, pool: str, tenant: str) -> None:
        self.depth.labels(pool, tenant).inc()

    def leave(self, pool: str, tenant: str, waited_s: float, outcome: str) -> None:
        self.depth.labels(pool, tenant).dec()
        self.wait.labels(pool, tenant, outcome).observe(waited_s)

    def shed(self, pool: str, tenant: str, reason: str) -> None:
        self.refused.labels(pool, tenant, reason).inc()
