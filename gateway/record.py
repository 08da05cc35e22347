"""What the gateway learns about one request as it passes the layers, and who gets told.

The pipeline fills a `RequestRecord` as it goes (auth → plan → admission → route → relay → settle); observers
(metrics, traces, the request log) read it. Observers never raise into the request path.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, Protocol

Outcome = Literal["ok", "error", "cancelled"]


class TraceHandle(Protocol):
    """One request's trace: a span per layer and one per upstream attempt (observability/tracing.py)."""

    def stage(self, name: str) -> AbstractContextManager[None]: ...

    def upstream_start(self, worker: str, rid: str, headers: dict[str, str]) -> None:
        """Open the attempt's span and put its W3C context into `headers` for the worker."""
        ...

    def upstream_end(self, error: str | None) -> None: ...

    def finish(self, record: RequestRecord) -> None: ...


class NoTrace:
    """Tracing off: the incoming traceparent is still forwarded as it came."""

    def __init__(self, traceparent: str | None = None) -> None:
        self._traceparent = traceparent

    def stage(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()

    def upstream_start(self, worker: str, rid: str, headers: dict[str, str]) -> None:
        if self._traceparent:
            headers["traceparent"] = self._traceparent

    def upstream_end(self, error: str | None) -> None:
        return None

    def finish(self, record: RequestRecord) -> None:
        return None


@dataclass
class RequestRecord:
    request_id: str
    endpoint: str  # "chat" or "completions"
    # Minted here, once per request: the usage ledger's idempotency key (the caller's request id need not be unique).
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    stream: bool = False
    tenant: str | None = None
    key_id: str | None = None  # never the key: its id in the admin API (`cfg-<hex>` for a key from the config)
    model: str | None = None
    pool: str | None = None
    worker: str | None = None
    rid: str | None = None  # the live attempt's id on the worker
    attempts: int = 0
    max_tokens: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the worker served from its prefix cache, when it says
    # Set when settled: whether the request was charged for what the worker did (False: refunded whole, e.g. it
    # failed before producing anything). The ledger records tokens as charged.
    charged: bool | None = None
    usage_from_worker: bool = False
    finish_reasons: list[str] = field(default_factory=list)
    response_id: str | None = None
    status: int = 0
    outcome: Outcome = "ok"
    error_type: str | None = None
    error_detail: str | None = None  # the error's full message (worker URLs and words included): logs only
    limit_decision: str | None = None  # "admitted", "degraded", or the rejecting limit's kind
    admitted_at: float | None = None
    first_byte_at: float | None = None  # first byte of the answer sent to the client
    ended_at: float | None = None
    upstream_s: float = 0.0  # time spent waiting on workers
    queue_s: float = 0.0  # time spent in the fair queue, waiting for a slot in the pool
    chunks: int = 0
    trace: TraceHandle = field(default_factory=NoTrace, repr=False)

    def elapsed(self) -> float:
        end = self.ended_at if self.ended_at is not None else time.perf_counter()
        return end - self.started

    def gateway_overhead_s(self) -> float:
        """Time spent in the gateway itself, excluding the wait on workers and for a slot in the pool."""
        return max(0.0, self.elapsed() - self.upstream_s - self.queue_s)


def cached_tokens_of(usage: Mapping[str, object]) -> int:
    """`usage.prompt_tokens_details.cached_tokens` (SGLang sends it with `--enable-cache-report`); 0 if absent."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0 else 0


class Observer:
    """What the pipeline tells observers. Every hook does nothing here; an observer overrides the ones it needs."""

    def on_admitted(self, record: RequestRecord) -> None:
        """The limiter admitted the request (it now holds a reservation)."""

    def on_upstream_attempt(self, record: RequestRecord, worker: str, error: str | None) -> None:
        """One attempt on a worker got its answer's headers (`error` None) or failed before them."""

    def on_chunk(self, record: RequestRecord, now: float) -> None:
        """Streamed events went to the client at `now` (perf_counter)."""

    def on_finish(self, record: RequestRecord) -> None:
        """The request is over and settled; `record` is final."""


def server_timing(record: RequestRecord) -> str:
    """The standard Server-Timing header: the gateway's own time, the wait on workers and, when the request waited
    for a slot, the time in the fair queue, so far, in ms."""
    timing = (
        f'gateway;dur={record.gateway_overhead_s() * 1000:.2f};desc="gateway overhead", '
        f'upstream;dur={record.upstream_s * 1000:.2f};desc="worker"'
    )
    if record.queue_s:
        timing += f', queue;dur={record.queue_s * 1000:.2f};desc="fair queue"'
    return timing
