"""A non-streamed answer: read it whole within the fair-time budget, account its usage, pass it on.

The body is parsed anyway (usage), so where SGLang's answer is not OpenAI's (an `rid_0` id with n > 1, null usage
details) it is mended on the parsed object and encoded again; an answer SGLang ended with `finish_reason: "abort"`
on its own is a 502, charged for what the worker reports it did.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sparsegate.gateway.context import Attempt, RequestContext
from sparsegate.gateway.dialects import OPENAI, WholeUsage
from sparsegate.gateway.errors import UpstreamAborted, UpstreamTimeout
from sparsegate.gateway.overload import FairDeadline
from sparsegate.gateway.record import RequestRecord, cached_tokens_of, server_timing
from sparsegate.gateway.relay.mend import mend_body
from sparsegate.gateway.state import GatewayState, Snapshot
from sparsegate.gateway.wire import Send, raw_headers


async def relay_whole(
    state: GatewayState, snapshot: Snapshot, ctx: RequestContext, attempt: Attempt, send: Send
) -> None:
    record = ctx.record
    assert attempt.response is not None
    started = time.perf_counter()
    try:
        async with FairDeadline(state.monitor, snapshot.timeouts.total_s):
            body = await attempt.response.read()
    except TimeoutError:
        raise UpstreamTimeout(f"Worker {attempt.worker.url} did not answer in time.") from None
    finally:
        record.upstream_s += time.perf_counter() - started
    ctx.upstream_complete = True
    assert ctx.job is not None
    if ctx.job.dialect is OPENAI:
        obj = account_whole(record, body)
        if obj is not None:
            if "abort" in record.finish_reasons:
                raise UpstreamAborted()
            if mend_body(obj, attempt.rid, ctx.job.expands_rid):
                body = orjson.dumps(obj)
                record.response_id = attempt.rid
    else:
        account_usage(record, ctx.job.dialect.whole_usage(body))
    headers = {**ctx.response_headers, "content-type": "application/json", "server-timing": server_timing(record)}
    record.status = 200
    record.first_byte_at = time.perf_counter()
    await ctx.start_response(send, 200, raw_headers(headers, len(body)))
    await ctx.send_last(send, body)


def account_whole(record: RequestRecord, body: bytes) -> dict[str, Any] | None:
    """Account the answer's usage, id and finish reasons; the parsed answer, or None when it is not an object."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        record.prompt_tokens = _int(usage.get("prompt_tokens")) or record.prompt_tokens
        record.completion_tokens = _int(usage.get("completion_tokens"))
        record.cached_tokens = cached_tokens_of(usage)
        record.usage_from_worker = True
    record.response_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    record.finish_reasons = [
        str(c.get("finish_reason")) for c in obj.get("choices") or [] if isinstance(c, dict) and c.get("finish_reason")
    ]
    return obj


def account_usage(record: RequestRecord, usage: WholeUsage) -> None:
    """The Responses, Anthropic and embeddings usage shapes (read by their dialect)."""
    record.response_id = usage.response_id
    if usage.prompt_tokens is not None:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens or 0
        record.usage_from_worker = True


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
