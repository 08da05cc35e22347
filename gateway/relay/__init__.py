"""The relay: one admitted request's trip to a worker and back, written straight to the ASGI `send`.

- `attempts`: picking workers and opening the request, retried before the first byte, with breaker attribution;
- `whole`: a non-streamed answer, read whole and passed on;
- `stream`: an SSE answer, event by event, with one fair-time watchdog per stream;
- `typed`: the same for typed event streams (Responses, Anthropic), relayed unchanged.

Before the first byte reaches the client a failure can still choose the status code. After it, nothing is retried;
a failure becomes the API's error event (`data: {"error": ...}` then `[DONE]` for chat; `dialects.py` for the others).
"""

from __future__ import annotations

from sparsegate.gateway.context import RequestContext
from sparsegate.gateway.relay.attempts import open_with_retries
from sparsegate.gateway.relay.stream import relay_stream
from sparsegate.gateway.relay.typed import relay_typed_stream
from sparsegate.gateway.relay.whole import relay_whole
from sparsegate.gateway.state import GatewayState, Snapshot
from sparsegate.gateway.wire import Send


async def relay(state: GatewayState, snapshot: Snapshot, ctx: RequestContext, send: Send) -> None:
    """Open the request on a worker (retrying before the first byte) and relay its answer to the client."""
    assert ctx.job is not None
    attempt = await open_with_retries(state, snapshot, ctx, ctx.job)
    if ctx.job.stream and ctx.job.dialect.typed_stream:
        await relay_typed_stream(state, snapshot, ctx, attempt, send)
    elif ctx.job.stream:
        await relay_stream(state, snapshot, ctx, attempt, send)
    else:
        await relay_whole(state, snapshot, ctx, attempt, send)


__all__ = ["relay"]
