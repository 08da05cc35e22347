"""Talking to SGLang workers: one small protocol, two implementations.

`UpstreamClient.post` returns once the worker's response headers are in; `status_error` turns a non-2xx answer
into the gateway's tree. Production uses aiohttp directly (`via_aiohttp`): in the benchmark httpx, httpcore and
anyio took ~60 % of the gateway's CPU. Tests use httpx (`via_httpx`), whose transports let the simulated worker run
in process as an ASGI app, or `httpx.MockTransport` inject faults. Each implementation is the one boundary where its
library's exceptions become ours.

Deadlines are not the clients' business: the relay bounds every wait in fair time (overload.py), so a deadline
never fires because of our own event loop's lag.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

import orjson

from sparsegate.gateway.errors import (
    UpstreamBusy,
    UpstreamError,
    UpstreamNotReady,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)


class UpstreamResponse(Protocol):
    """A worker's answer whose headers are in; the body is read by the caller, whole or as it arrives."""

    status: int

    def header(self, name: str) -> str | None: ...

    async def read(self) -> bytes:
        """The whole body. Raises `UpstreamError` on a broken connection."""
        ...

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as the socket delivers it, one item per read. Raises `UpstreamError` on a broken connection."""
        ...

    async def aclose(self) -> None:
        """Release the connection (back to the pool when the body was read to the end)."""
        ...


class UpstreamClient(Protocol):
    async def post(
        self, worker: str, path: str, body: bytes, headers: dict[str, str], *, method: str = "POST"
    ) -> UpstreamResponse:
        """Send a JSON POST (or `method`, e.g. GET without a body) and wait for the response headers. Raises
        `UpstreamError` (refused, reset)."""
        ...

    async def abort(self, worker: str, rid: str) -> None:
        """Tell the worker to stop `rid` (SGLang notices a vanished client only seconds later). Never raises."""
        ...

    async def close(self) -> None: ...


def upstream_message(body: bytes, status: int) -> str:
    """The worker's own error message, from SGLang's or OpenAI's shapes; a short text otherwise."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode(errors="replace").strip()
        return text[:500] or f"worker answered {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        for key in ("message", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return f"worker answered {status}"


def _retry_after(value: str | None) -> float:
    try:
        wait = float(value) if value is not None else 1.0
    except ValueError:
        return 1.0
    return min(120.0, max(0.001, wait))


def status_error(worker: str, status: int, body: bytes, retry_after: str | None = None) -> GatewayErrorT:
    """What a worker's non-2xx answer means, and whom it blames (errors.py)."""
    message = upstream_message(body, status)
    if 400 <= status < 500 and status not in (408, 429):
        return UpstreamRejected(message, upstream_status=status)  # the client's mistake: it needs the words
    # The worker's own failure: its words may name internal hosts, so clients get ours and the log gets both.
    exc: UpstreamError
    if status == 503:
        exc = UpstreamNotReady(f"Worker {worker} is unavailable.")
    elif status == 429:
        exc = UpstreamBusy(f"Worker {worker} is overloaded.", retry_after_s=_retry_after(retry_after))
    elif status in (408, 504):
        exc = UpstreamTimeout(f"Worker {worker} timed out.")
    else:
        exc = UpstreamUnavailable(f"Worker {worker} failed ({status}).")
    exc.detail = message
    return exc


GatewayErrorT = UpstreamError | UpstreamRejected

__all__ = ["UpstreamClient", "UpstreamResponse", "status_error", "upstream_message"]
