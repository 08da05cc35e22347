"""Prometheus metrics under SGLang's `sglang:*` names, on a registry owned by one app.

Each simulator gets its own `CollectorRegistry`: several sims run in one test process, and the global
registry would refuse the second set of names. Gauges read the live engine state at scrape time through
the callables handed in, so nothing has to remember to update them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
        running: Callable[[], float],
        queued: Callable[[], float],
        token_usage: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model_name",)
        self._throughput = ThroughputWindow()

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, labels, registry=self.registry).labels(model_name=model).set_function(read)

        gauge("sglang:num_running_reqs", "The number of running requests.", running)
        gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", queued)
        gauge("sglang:token_usage", "The token usage of the KV pool (0..1).", token_usage)
        gauge("sglang:gen_throughput", "The generation throughput (token/s).", self._throughput.rate)
        self._prompt_tokens = Counter(
            "sglang:prompt_tokens", "Number of prefill tokens processed.", labels, registry=self.registry
        ).labels(model_name=model)
        self._generation_tokens = Counter(
            "sglang:generation_tokens", "Number of generation tokens processed.", labels, registry=self.registry
        ).labels(model_name=model)
        self._requests = Counter(
            "sglang:num_requests", "Number of requests processed.", labels, registry=self.registry
        ).labels(model_name=model)
        self._aborted = Counter(
            "sglang:num_aborted_requests", "Number of requests aborted.", labels, registry=self.registry
        ).labels(model_name=model)
        self._ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Time to first token in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model_name=model)
        self._e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "End-to-end request latency in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model_name=model)

    def observe_prompt(self, tokens: int) -> None:
        """A request was admitted with this many prompt tokens."""
        self._prompt_tokens.inc(tokens)

    def observe_tokens(self, tokens: int) -> None:
        """This many tokens were just generated."""
        if tokens:
            self._generation_tokens.inc(tokens)
            self._throughput.add(tokens)

    def observe_ttft(self, seconds: float) -> None:
        """A request produced its first token this long after it arrived."""
        self._ttft.observe(seconds)

    def observe_finished(self, seconds: float, *, aborted: bool) -> None:
        """A request left the engine this long after it arrived."""
        self._requests.inc()
        self._e2e.observe(seconds)
        if aborted:
            self._aborted.inc()

    def throughput(self) -> float:
        """Generated tokens per second, recently."""
        return self._throughput.rate()

    def exposition(self) -> bytes:
        """The text exposition format of this registry."""
        return generate_latest(self.registry)
