"""Prometheus metrics, named after the OpenTelemetry GenAI conventions where one exists.

Labels are bounded by configuration (tenant, model, pool, worker URL, endpoint, status class); never a request id,
a key or a prompt. Each app owns its registry, so several gateways can live in one process (tests) without clashing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sparsegate.gateway.record import Observer, RequestRecord
from sparsegate.gateway.routing import Worker

# Token latencies span sub-millisecond (a cached decode step) to minutes (a long prefill behind a queue).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


def _label(value: str | None) -> str:
    return value if value else "none"


class _BreakerCollector(Collector):
    """Reads the breaker state of every configured worker at scrape time."""

    def __init__(self, workers: Callable[[], Iterable[Worker]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sparsegate_worker_breaker_state",
            "Circuit-breaker state per worker: 0 closed, 1 half-open, 2 open.",
            labels=["pool", "worker"],
        )
        for worker in self._workers():
            family.add_metric([worker.pool, worker.url], BREAKER_VALUE.get(worker.state, 2.0))
        yield family


class GatewayMetrics(Observer):
    """An observer that turns request records into Prometheus series."""

    def __init__(self, workers: Callable[[], Iterable[Worker]], *, multiprocess_dir: str | None = None) -> None:
        # With several processes on one port (supervisor.py), prometheus_client keeps each process's values in
        # `multiprocess_dir` and a scrape of any process reads all of them.
        self._multiprocess_dir = multiprocess_dir
        self._workers = workers
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sparsegate_requests", "Requests by final status.", ["tenant", "model", "pool", "endpoint", "status"],
            registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Time to the first streamed byte of the answer.",
            ["model", "pool", "tenant"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "gen_ai_server_time_per_output_token_seconds", "Time between two streamed chunks (inter-token latency).",
            ["model", "pool"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds", "End-to-end request duration as the gateway saw it.",
            ["model", "pool", "tenant", "endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "gen_ai_client_token_usage", "Tokens by tenant, model and type (input or output).",
            ["tenant", "model", "gen_ai_token_type"], registry=r,
        )  # fmt: skip
        self.limiter = Counter(
            "sparsegate_limiter_decisions", "Admission decisions: admitted, degraded, or the limit that rejected.",
            ["tenant", "decision"], registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "sparsegate_upstream_errors", "Failed attempts on workers.", ["pool", "worker", "error"], registry=r
        )
        self.retries = Counter("sparsegate_upstream_retries", "Attempts beyond the first.", ["pool"], registry=r)
        self.overhead = Histogram(
            "sparsegate_gateway_overhead_seconds", "Time spent in the gateway itself, excluding the wait on workers.",
            ["endpoint"], buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.outcomes = Counter(
            "sparsegate_request_outcomes", "Admitted requests by how they ended: ok, error or cancelled.",
            ["tenant", "outcome"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "sparsegate_requests_in_flight", "Admitted requests not yet settled.", ["tenant"], registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        r.register(_BreakerCollector(workers))
        self._last_chunk: dict[int, float] = {}
        # Children by label values: labels are bounded by the config, and `labels()` costs microseconds per call.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        merged.register(_BreakerCollector(self._workers))  # this process's view of the workers' breakers
        return generate_latest(merged)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve this registry without auth on its own port (`metrics_port`), in a thread; returns the stop."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop

    # -- observer ---------------------------------------------------------------------------------------------------

    def on_admitted(self, record: RequestRecord) -> None:
        self._child(self.in_flight, _label(record.tenant)).inc()

    def on_upstream_attempt(self, record: RequestRecord, worker: str, error: str | None) -> None:
        if record.attempts > 1:
            self._child(self.retries, _label(record.pool)).inc()
        if error is not None:
            self._child(self.upstream_errors, _label(record.pool), worker, error).inc()

    def on_chunk(self, record: RequestRecord, now: float) -> None:
        key = id(record)
        last = self._last_chunk.get(key)
        if last is not None:
            self._child(self.itl, _label(record.model), _label(record.pool)).observe(now - last)
        self._last_chunk[key] = now

    def on_finish(self, record: RequestRecord) -> None:
        self._last_chunk.pop(id(record), None)
        # The model label only once the router resolved it to a pool: a name from a refused body (404, 403, 400)
        # would let any key holder mint series without bound.
        model = _label(record.model) if record.pool is not None else "none"
        tenant, pool = _label(record.tenant), _label(record.pool)
        self._child(self.requests, tenant, model, pool, record.endpoint, str(record.status)).inc()
        if record.limit_decision is not None:
            self._child(self.limiter, tenant, record.limit_decision).inc()
        if record.admitted_at is None:
            return  # refused before admission: counted above, nothing was served
        self._child(self.in_flight, tenant).dec()
        self._child(self.outcomes, tenant, record.outcome).inc()
        self._child(self.duration, model, pool, tenant, record.endpoint).observe(record.elapsed())
        self._child(self.overhead, record.endpoint).observe(record.gateway_overhead_s())
        if record.stream and record.first_byte_at is not None and record.outcome == "ok":
            self._child(self.ttft, model, pool, tenant).observe(record.first_byte_at - record.started)
        if record.prompt_tokens:
            self._child(self.tokens, tenant, model, "input").inc(record.prompt_tokens)
        if record.completion_tokens:
            self._child(self.tokens, tenant, model, "output").inc(record.completion_tokens)
