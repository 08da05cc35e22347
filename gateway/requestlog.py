"""One structured JSON line per request, for operators: who, what, where, how long, how many tokens.

The fields go out through the process's one JSON formatter (observability/logs.py), at the top level of the line.

API keys and prompt text never reach this module: it only sees the request record.
"""

from __future__ import annotations

import logging
import time

from sparsegate.gateway.record import Observer, RequestRecord

log = logging.getLogger("sparsegate.requests")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class RequestLog(Observer):
    """An observer that writes the request line when a request ends."""

    def on_finish(self, record: RequestRecord) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        ttft = None if record.first_byte_at is None else record.first_byte_at - record.started
        line = {
            "ts": round(time.time(), 3),
            "event": "request",
            "request_id": record.request_id,
            "endpoint": record.endpoint,
            "tenant": record.tenant,
            "model": record.model,
            "pool": record.pool,
            "worker": record.worker,
            "attempts": record.attempts,
            "stream": record.stream,
            "status": record.status,
            "outcome": record.outcome,
            "error": record.error_type,
            "error_detail": record.error_detail,
            "limit": record.limit_decision,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "finish_reasons": record.finish_reasons,
            "ttft_ms": _ms(ttft),
            "duration_ms": _ms(record.elapsed()),
            "upstream_ms": _ms(record.upstream_s),
            "gateway_ms": _ms(record.gateway_overhead_s()),
        }
        log.info("request", extra={"fields": line})
