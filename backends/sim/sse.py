"""Responses that behave like a real worker's on the wire: late headers, late disconnect notice, hard cuts.

- `EventStreamResponse` sends its headers with the first event, as SGLang does (it waits for the first
  engine output before answering), so a stalled worker sends no byte at all. It watches `receive()` for
  the client leaving and reports it, instead of letting the framework cancel generation.
- A `CUT` item ends the response without its terminator. ASGI has no "abort connection" message; an app
  that returns mid-body makes uvicorn close the socket, which is exactly the fault to simulate (uvicorn
  logs one "returned without completing response" line for it).
- `CutJSONResponse` does the same to a non-streamed body: full `content-length`, half the bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Final

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

SSE_HEADERS: Final = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Cut:
    """Marker: close the connection here."""


CUT: Final = Cut()


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone (the request body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse(Response):
    """`text/event-stream` from an async generator of encoded events (or `CUT`)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes | Cut, None], on_disconnect: Callable[[], None]) -> None:
        # Not `Response.__init__`: that would render an empty body and announce `content-length: 0`.
        self.status_code = 200
        self.background = None
        self.init_headers(SSE_HEADERS)
        self._events = events
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone = watch.done() and not pump.done()
            for task in (pump, watch):
                task.cancel()
            # Collect both so neither is left pending; a real error in `pump` still propagates below.
            await asyncio.gather(pump, watch, return_exceptions=True)
            await self._events.aclose()
        if gone:
            self._on_disconnect()
        elif not pump.cancelled():
            pump.result()

    async def _pump(self, send: Send) -> None:
        started = False
        async for item in self._events:
            if not started:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                started = True
            if isinstance(item, Cut):
                return
            await send({"type": "http.response.body", "body": item, "more_body": True})
        if not started:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class CutJSONResponse(JSONResponse):
    """A JSON response that promises its whole length and then stops halfway."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        half = bytes(self.body[: len(self.body) // 2])
        await send({"type": "http.response.body", "body": half, "more_body": True})


async def watch_client(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    """Call `on_disconnect` when the client leaves; run as a task and cancel it once the answer is ready."""
    await wait_for_disconnect(receive)
    on_disconnect()
