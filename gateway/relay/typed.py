"""A typed SSE answer (`event:` lines: OpenAI's Responses API, Anthropic's Messages API), relayed unchanged.

Unlike chat streams nothing is rewritten: every event goes on as the worker sent it, one send per upstream read.
The dialect's tally reads only the events that carry usage, the end or an error. There is no `[DONE]`: the stream
ends with the API's own terminal event, and a failure becomes the API's own error events (`dialects.py`). The
watchdog is the same fair-time deadline as for chat streams.
"""

from __future__ import annotations

import time
from contextlib import aclosing

from sparsegate.gateway.context import Attempt, RequestContext
from sparsegate.gateway.dialects import TypedTally
from sparsegate.gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sparsegate.gateway.overload import FairDeadline
from sparsegate.gateway.record import RequestRecord, server_timing
from sparsegate.gateway.relay.stream import SSE_HEADERS
from sparsegate.gateway.sse import EventSplitter
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
    splitter = EventSplitter()
    headers = {**ctx.response_headers, **SSE_HEADERS, "server-timing": server_timing(record)}
    record.status = 200
    failure: GatewayError | None = None
    observer = state.observer
    read_s = snapshot.timeouts.read_s
    ctx.tally = tally
    await ctx.start_response(send, 200, raw_headers(headers))
    waited = time.perf_counter()
    try:
        async with (
            FairDeadline(state.monitor, snapshot.timeouts.first_byte_s) as watchdog,
            aclosing(attempt.response.chunks()) as chunks,
        ):
            async for chunk in chunks:
                now = time.perf_counter()
                record.upstream_s += now - waited
                watchdog.pause()
                out = []
                for event in splitter.feed(chunk):
                    name, data = event_fields(event)
                    if data:
                        tally.take_event(name, data)
                    out.append(event + b"\n\n")
                if out:
                    if record.first_byte_at is None:
                        record.first_byte_at = now
                    record.chunks += len(out)
                    observer.on_chunk(record, now)
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                if tally.done:
                    break
                watchdog.reset(read_s)
                waited = time.perf_counter()
    except TimeoutError:
        failure = UpstreamTimeout(f"Worker {attempt.worker.url} stopped sending in time.")
    except UpstreamError as exc:
        failure = exc
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
