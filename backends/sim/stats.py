"""What reached this worker: counters and a bounded log of recent requests, served by `GET /sim/stats`.

Tests read these to tell which worker got a request, whether the gateway aborted it (`aborted`) or only
walked away (`disconnected`), and which trace headers arrived.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["queued", "running", "completed", "aborted", "disconnected", "failed", "rejected"]
Settled = Literal["completed", "aborted", "disconnected", "failed", "rejected"]

# Headers worth proving the gateway forwarded. Values of anything else (above all `authorization`) are
# never kept; `header_names` lists every name so a test can still prove a header did NOT arrive.
RECORDED_HEADERS = ("traceparent", "tracestate", "baggage", "x-request-id")
RECORDED_HEADER_PREFIXES = ("x-sparsegate-",)


def pick_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The recorded subset of request headers, by lower-case name."""
    seen: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in RECORDED_HEADERS or key.startswith(RECORDED_HEADER_PREFIXES):
            seen[key] = value
    return seen


@dataclass(slots=True)
class RequestRecord:
    """One generation request as this worker saw it; updated in place until it settles."""

    endpoint: str
    headers_seen: dict[str, str]
    header_names: list[str]
    rid: str | None = None
    model: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    max_tokens: int | None = None
    priority: int | None = None
    status: Status = "queued"
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    received_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """The `/sim/stats` `recent[]` entry."""
        return {
            "rid": self.rid,
            "endpoint": self.endpoint,
            "model": self.model,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "max_tokens": self.max_tokens,
            "priority": self.priority,
            "status": self.status,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
            "error": self.error,
            "headers_seen": dict(self.headers_seen),
            "header_names": list(self.header_names),
            "received_at": self.received_at,
        }


COUNTERS: tuple[str, ...] = ("received", "completed", "aborted", "disconnected", "failed", "rejected")


class SimStats:
    """Counters since start (or the last reset) and the last `limit` requests, newest last."""

    def __init__(self, limit: int) -> None:
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._recent: deque[RequestRecord] = deque(maxlen=limit)

    def open(self, endpoint: str, headers: Iterable[tuple[str, str]]) -> RequestRecord:
        """Count a request as received and start its record."""
        pairs = list(headers)
        record = RequestRecord(
            endpoint=endpoint,
            headers_seen=pick_headers(pairs),
            header_names=sorted({name.lower() for name, _ in pairs}),
        )
        self._counts["received"] += 1
        self._recent.append(record)
        return record

    def settle(
        self,
        record: RequestRecord,
        status: Settled,
        *,
        finish_reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """Mark a request done and count its outcome."""
        record.status = status
        record.finish_reason = finish_reason
        record.error = error
        self._counts[status] += 1

    def reset(self) -> None:
        """Zero the counters and forget the recent requests (requests in flight carry on)."""
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._recent.clear()

    def snapshot(self, active: Mapping[str, Any]) -> dict[str, Any]:
        """The `/sim/stats` body; `active` adds the live view (`active`, `rids_active`, ...)."""
        return {**self._counts, **active, "recent": [record.to_json() for record in self._recent]}
