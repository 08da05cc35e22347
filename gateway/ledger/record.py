"""One ledger record: what a finished request used, and nothing a bill does not need (no prompt, no key)."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

from sparsegate.gateway.record import RequestRecord


class UsageRecord(BaseModel):
    """The ledger's row. `uid` is the gateway's own id for the request and the idempotency key: a record written
    twice (a retried write, a replay) is counted once. `request_id` is the `x-request-id` the client saw."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    uid: str
    request_id: str
    ts: float  # when the request ended, unix seconds
    tenant: str
    key_id: str | None
    model: str | None
    pool: str | None
    endpoint: str
    status: int
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float | None
    duration_ms: float

    @classmethod
    def of(cls, record: RequestRecord, now: float | None = None) -> UsageRecord:
        """The record of a finished request, with the tokens it was charged for (`record.charged`, set by settling):
        a request refunded whole (it failed before the worker produced anything) shows none, since its prompt count
        is the gateway's estimate of work never done; a disconnect pays for the prompt and what was streamed."""
        ttft = None if record.first_byte_at is None else round((record.first_byte_at - record.started) * 1000, 3)
        served = (
            record.charged
            if record.charged is not None
            else not (record.outcome == "error" and record.completion_tokens == 0)
        )
        return cls(
            uid=record.uid,
            request_id=record.request_id,
            ts=time.time() if now is None else now,
            tenant=record.tenant or "",
            key_id=record.key_id,
            model=record.model,
            pool=record.pool,
            endpoint=record.endpoint,
            status=record.status,
            outcome=record.outcome,
            prompt_tokens=record.prompt_tokens if served else 0,
            completion_tokens=record.completion_tokens,
            cached_tokens=record.cached_tokens if served else 0,
            ttft_ms=ttft,
            duration_ms=round(record.elapsed() * 1000, 3),
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
