"""An SSE answer, relayed as it arrives: one send per upstream read, JSON parsed only where it must be rewritten.

One `FairDeadline` per stream is the watchdog: armed with `first_byte_s` for the first read, re-armed with `read_s`
after each, and paused while we wait on the client (a slow reader is not the worker's fault).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import aclosing

from sparsegate.gateway.context import Attempt, RequestContext
from sparsegate.gateway.errors import (
    UpstreamAborted,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_event,
)
from sparsegate.gateway.overload import FairDeadline
from sparsegate.gateway.record import RequestRecord, server_timing
from sparsegate.gateway.relay.mend import Mender, worker_stream_error
from sparsegate.gateway.sse import DONE_EVENT, EventSplitter, StreamTally, event_data, frame
from sparsegate.gateway.state import GatewayState, Snapshot
from sparsegate.gateway.wire import Send, raw_headers

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    "connection": "keep-alive",
}


async def relay_stream(
    state: GatewayState, snapshot: Snapshot, ctx: RequestContext, attempt: Attempt, send: Send
) -> None:
    job, record = ctx.job, ctx.record
    assert job is not None and attempt.response is not None
    tally = StreamTally(wants_usage=job.wants_usage)
    mend = Mender(attempt.rid, job.expands_rid).event
    headers = {**ctx.response_headers, **SSE_HEADERS, "server-timing": server_timing(record)}
    record.status = 200

    def forward(event: bytes) -> bytes | None:
        data = event_data(event)
        if data is None:
            return event + b"\n\n"  # comments and keep-alives pass through
        forwarded = tally.take(data)
        return None if forwarded is None else frame(mend(forwarded))

    await ctx.start_response(send, 200, raw_headers(headers))
    try:
        failure = await pump(state, snapshot, record, attempt, send, forward, lambda: tally.done)
    finally:
        # Runs on cancellation too (client gone), so a cut stream is still counted for settling.
        account_stream(record, tally)
        if job.expands_rid and record.response_id is not None:
            record.response_id = attempt.rid  # the id the client saw, not the worker's `rid_0`
    ctx.upstream_complete = tally.done or len(tally.finish_reasons) >= job.n
    if failure is None:
        # The worker's own error event, or an abort the client did not cause (it would have cancelled us first),
        # ends the stream with our error event; SGLang's `finish_reason: "abort"` is not OpenAI's.
        if tally.upstream_error is not None:
            failure = worker_stream_error(tally.upstream_error)
        elif tally.aborted:
            failure = UpstreamAborted()
        elif not ctx.upstream_complete:
            failure = UpstreamUnavailable(
                f"The stream from worker {attempt.worker.url} ended before it was complete.", outcome="reset"
            )
    tail = b""
    if failure is not None:
        ctx.fail(failure)
        tail = error_event(failure)
    await ctx.send_last(send, tail + DONE_EVENT)


async def pump(
    state: GatewayState,
    snapshot: Snapshot,
    record: RequestRecord,
    attempt: Attempt,
    send: Send,
    forward: Callable[[bytes], bytes | None],
    done: Callable[[], bool],
) -> UpstreamError | None:
    """Relay the worker's events until it ends or `done()`: `forward` turns each event into the bytes to send
    (None drops it), and one send carries what one upstream read brought. Returns the worker's failure, if any."""
    assert attempt.response is not None
    splitter = EventSplitter()
    observer = state.observer
    read_s = snapshot.timeouts.read_s
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
                out = [framed for event in splitter.feed(chunk) if (framed := forward(event)) is not None]
                if out:
                    if record.first_byte_at is None:
                        record.first_byte_at = now
                    record.chunks += len(out)
                    observer.on_chunk(record, now)
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                if done():
                    break
                watchdog.reset(read_s)
                waited = time.perf_counter()
    except TimeoutError:
        return UpstreamTimeout(f"Worker {attempt.worker.url} stopped sending in time.")
    except UpstreamError as exc:
        return exc
    return None


def account_stream(record: RequestRecord, tally: StreamTally) -> None:
    record.response_id = tally.response_id
    record.finish_reasons = [tally.finish_reasons[i] for i in sorted(tally.finish_reasons)]
    if tally.usage is not None:
        record.prompt_tokens = tally.usage.get("prompt_tokens", record.prompt_tokens)
        record.completion_tokens = tally.usage.get("completion_tokens", tally.content_events)
        record.cached_tokens = tally.usage.get("cached_tokens", 0)
        record.usage_from_worker = True
    else:
        # Cut short: count what was relayed. SGLang streams one token per event by default.
        record.completion_tokens = tally.content_events
