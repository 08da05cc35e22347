"""A typed SSE answer (`event:` lines: OpenAI's Responses API, Anthropic's Messages API), relayed unchanged.

Unlike chat streams nothing is rewritten: every event goes on as the worker sent it, one send per upstream read.
The dialect's tally reads only the events that carry usage, the end or an error. There is no `[DONE]`: the stream
ends with the API's own terminal event, and a failure becomes the API's own error events (`dialects.py`). The
watchdog is the same fair-time deadline as for chat streams.
"""

from __future__ import annotations

from sparsegate.gateway.context import Attempt, RequestContext
from sparsegate.gateway.dialects import TypedTally
from sparsegate.gateway.errors import GatewayError, UpstreamUnavailable
from sparsegate.gateway.record import RequestRecord, server_timing
from sparsegate.gateway.relay.stream import SSE_HEADERS, pump
from sparsegate.gateway.state import GatewayState, Snapshot
from sparsegate.gateway.wire import Send, raw_headers


def event_fields(event: bytes) -> tuple[str, bytes]:
    """An event's `event:` name (empty when absent) and its joined `data:` payload."""
    name = b""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    return name.decode("utf-8", "replace"), b"\n".join(data)


async def relay_typed_stream(
    state: GatewayState, snapshot: Snapshot, ctx: RequestContext, attempt: Attempt, send: Send
) -> None:
    job, record = ctx.job, ctx.record
    assert job is not None and attempt.response is not None
    tally = job.dialect.new_tally()
    assert tally is not None
    headers = {**ctx.response_headers, **SSE_HEADERS, "server-timing": server_timing(record)}
    record.status = 200
    ctx.tally = tally

    def forward(event: bytes) -> bytes:
        name, data = event_fields(event)
        if data:
            tally.take_event(name, data)
        return event + b"\n\n"

    await ctx.start_response(send, 200, raw_headers(headers))
    failure: GatewayError | None
    try:
        failure = await pump(state, snapshot, record, attempt, send, forward, lambda: tally.done)
    finally:
        account_typed(record, tally)
    ctx.upstream_complete = tally.done
    if failure is None and not tally.done and tally.upstream_error is None:
        failure = UpstreamUnavailable(
            f"The stream from worker {attempt.worker.url} ended before it was complete.", outcome="reset"
        )
    tail = b""
    if failure is not None:
        ctx.fail(failure)
        tail = job.dialect.error_event(failure, tally)
    elif tally.upstream_error is not None:
        record.outcome, record.error_type = "error", "UpstreamStreamError"
    await ctx.send_last(send, tail)


def account_typed(record: RequestRecord, tally: TypedTally) -> None:
    record.response_id = tally.response_id
    if tally.prompt_tokens is not None:
        record.prompt_tokens = tally.prompt_tokens
    if tally.completion_tokens is not None:
        record.completion_tokens = tally.completion_tokens
        record.usage_from_worker = True
    else:
        record.completion_tokens = tally.content_events  # cut short: one token per content event
