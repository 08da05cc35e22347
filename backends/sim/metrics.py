"""Prometheus metrics under SGLang 0.5.23's names and labels, on a registry owned by one app.

Read from `sglang/srt/observability/metrics_collector.py`:

- scheduler gauges (`sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`,
  `sglang:gen_throughput`, `sglang:cache_hit_rate`, `sglang:num_used_tokens`) carry
  `{model_name, engine_type, tp_rank, pp_rank, moe_ep_rank}` (`SchedulerMetricsCollector.init_new`);
- with `--enable-priority-scheduling` they also carry `priority`: the total under `priority=""` and, for the
  two request gauges, one series per priority ever seen under `priority="<int>"` (`_log_gauge_queue_count`;
  a request without a priority is counted under `"None"`, as SGLang's `Counter` of `req.priority` does);
- tokenizer-side counters and histograms carry `{model_name, engine_type[, priority]}` plus `is_streaming`
  where SGLang adds it; a request's own priority fills the `priority` label.

Each simulator gets its own `CollectorRegistry` (several sims run in one test process). The scheduler gauges
are set from the live engine state at scrape time, as SGLang's scheduler sets them on each log interval.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# SGLang's default TTFT / E2E buckets are longer lists; these cover the simulator's latencies.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENGINE_TYPE = "unified"

PriorityCounts = Mapping[int | None, int]


class ThroughputWindow:
    """Tokens per second over the last `window_s` seconds, in one-second buckets (cheap under load)."""

    def __init__(self, window_s: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, tokens]

    def add(self, tokens: int) -> None:
        """Count tokens generated now."""
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += tokens
        else:
            self._buckets.append([second, tokens])
        self._prune(second)

    def rate(self) -> float:
        """Tokens per second over the window."""
        self._prune(int(self._clock()))
        return sum(tokens for _, tokens in self._buckets) / self._window_s

    def _prune(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            self._buckets.popleft()


class SimMetrics:
    """The `sglang:*` metrics of one simulated worker."""

    def __init__(
        self,
        model: str,
        *,
        running: Callable[[], PriorityCounts],
        queued: Callable[[], PriorityCounts],
        token_usage: Callable[[], float],
        used_tokens: Callable[[], int],
        cache_hit_rate: Callable[[], float],
        priority_scheduling: bool = False,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.priority_scheduling = priority_scheduling
        self._read_running = running
        self._read_queued = queued
        self._reads: list[tuple[Gauge, Callable[[], float]]] = []
        self._known_priorities: set[int | None] = set()
        self._throughput = ThroughputWindow()
        self.scheduler_labels: dict[str, str] = {
            "model_name": model,
            "engine_type": ENGINE_TYPE,
            "tp_rank": "0",
            "pp_rank": "0",
            "moe_ep_rank": "0",
        }
        self.tokenizer_labels: dict[str, str] = {"model_name": model, "engine_type": ENGINE_TYPE}
        if priority_scheduling:
            self.scheduler_labels["priority"] = ""
            self.tokenizer_labels["priority"] = ""
        scheduler = tuple(self.scheduler_labels)
        tokenizer = tuple(self.tokenizer_labels)
        registry = self.registry

        self._running = Gauge(
            "sglang:num_running_reqs", "The number of running requests.", scheduler, registry=registry
        )
        self._queued = Gauge(
            "sglang:num_queue_reqs", "The number of requests in the waiting queue.", scheduler, registry=registry
        )

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            self._reads.append((Gauge(name, doc, scheduler, registry=registry), read))

        gauge("sglang:gen_throughput", "The generation throughput (token/s).", self._throughput.rate)
        gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", cache_hit_rate)
        gauge("sglang:token_usage", "The token usage.", token_usage)
        gauge("sglang:num_used_tokens", "The number of used tokens.", lambda: float(used_tokens()))

        streaming = (*tokenizer, "is_streaming")
        self._prompt_tokens = Counter(
            "sglang:prompt_tokens_total", "Number of prefill tokens processed.", streaming, registry=registry
        )
        self._generation_tokens = Counter(
            "sglang:generation_tokens_total", "Number of generation tokens processed.", streaming, registry=registry
        )
        self._cached_tokens = Counter(
            "sglang:cached_tokens_total",
            "Number of cached prompt tokens by source (device/host/storage).",
            (*tokenizer, "cache_source"),
            registry=registry,
        )
        self._requests = Counter(
            "sglang:num_requests_total", "Number of requests processed.", streaming, registry=registry
        )
        self._aborted = Counter(
            "sglang:num_aborted_requests_total", "Number of requests aborted.", tokenizer, registry=registry
        )
        self._ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            streaming,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            streaming,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def request_labels(self, priority: int | None, *, stream: bool | None = None) -> dict[str, str]:
        """The tokenizer labels of one request (its priority fills `priority`, as SGLang does)."""
        labels = dict(self.tokenizer_labels)
        if self.priority_scheduling and priority is not None:
            labels["priority"] = str(priority)
        if stream is not None:
            labels["is_streaming"] = "true" if stream else "false"
        return labels

    def observe_tokens(self, tokens: int) -> None:
        """This many tokens were just generated (throughput)."""
        if tokens:
            self._throughput.add(tokens)

    def observe_ttft(self, seconds: float, *, priority: int | None, stream: bool) -> None:
        """A request produced its first token this long after it arrived."""
        self._ttft.labels(**self.request_labels(priority, stream=stream)).observe(seconds)

    def observe_finished(
        self,
        seconds: float,
        *,
        priority: int | None,
        stream: bool,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        aborted: bool,
    ) -> None:
        """A request left the engine this long after it arrived (SGLang counts tokens at the end, too)."""
        labels = self.request_labels(priority, stream=stream)
        self._requests.labels(**labels).inc()
        self._prompt_tokens.labels(**labels).inc(prompt_tokens)
        self._generation_tokens.labels(**labels).inc(completion_tokens)
        if cached_tokens > 0:  # SGLang reports cached tokens by source only when there are some
            self._cached_tokens.labels(**self.request_labels(priority), cache_source="device").inc(cached_tokens)
        self._e2e.labels(**labels).observe(seconds)
        if aborted:
            self._aborted.labels(**self.request_labels(priority)).inc()

    def throughput(self) -> float:
        """Generated tokens per second, recently."""
        return self._throughput.rate()

    def exposition(self) -> bytes:
        """The text exposition format of this registry, with the scheduler gauges read now."""
        self._set_queue(self._running, self._read_running())
        self._set_queue(self._queued, self._read_queued())
        for gauge, read in self._reads:
            gauge.labels(**self.scheduler_labels).set(read())
        return generate_latest(self.registry)

    def _set_queue(self, gauge: Gauge, counts: PriorityCounts) -> None:
        gauge.labels(**self.scheduler_labels).set(sum(counts.values()))
        if not self.priority_scheduling:
            return
        self._known_priorities.update(counts)
        for priority in self._known_priorities:
            gauge.labels(**{**self.scheduler_labels, "priority": str(priority)}).set(counts.get(priority, 0))
