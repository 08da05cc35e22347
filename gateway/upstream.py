"""Talking to one SGLang worker over httpx; the one boundary where httpx's exceptions become ours.

`open` returns once the worker's response headers are in and the status is 2xx. Everything before that point is
safe to retry on another worker when the failure says so (`UpstreamError.retriable`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from sparsegate.gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sparsegate.gateway.settings import Timeouts

log = logging.getLogger("sparsegate.upstream")


@contextmanager
def map_upstream_errors(worker: str) -> Iterator[None]:
    """Translate httpx and timeout errors into the gateway's tree (httpx's `map_httpcore_exceptions`, one level up)."""
    try:
        yield
    except GatewayError:
        raise
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UpstreamUnavailable(f"Could not connect to worker {worker}.", retriable=True) from exc
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise UpstreamTimeout(f"Worker {worker} did not answer in time.") from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise UpstreamUnavailable(f"The connection to worker {worker} failed: {type(exc).__name__}.") from exc


def _upstream_message(body: bytes, status: int) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return text[:500] or f"worker answered {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
        if isinstance(data.get("detail"), str):
            return str(data["detail"])
    return f"worker answered {status}"


class Upstream:
    """Requests to workers through one shared httpx client (created in the app's lifespan)."""

    def __init__(self, client: httpx.AsyncClient, timeouts: Timeouts) -> None:
        self._client = client
        self._timeouts = timeouts

    async def open(
        self, worker: str, path: str, payload: dict[str, Any], headers: dict[str, str], *, wait_s: float
    ) -> httpx.Response:
        """POST and wait up to `wait_s` for a 2xx response's headers; the body is left to the caller to stream."""
        # httpx's own read timeout is only a backstop; the relay bounds each wait precisely with asyncio.timeout.
        timeout = httpx.Timeout(connect=self._timeouts.connect_s, read=None, write=30.0, pool=self._timeouts.connect_s)
        request = self._client.build_request("POST", worker + path, json=payload, headers=headers, timeout=timeout)
        with map_upstream_errors(worker):
            async with asyncio.timeout(wait_s):
                response = await self._client.send(request, stream=True)
            if response.status_code < 400:
                return response
            try:
                async with asyncio.timeout(self._timeouts.connect_s):
                    body = await response.aread()
            finally:
                await response.aclose()
        raise self._status_error(worker, response.status_code, body)

    @staticmethod
    def _status_error(worker: str, status: int, body: bytes) -> UpstreamError | UpstreamRejected:
        message = _upstream_message(body, status)
        if status == 503:
            return UpstreamUnavailable(f"Worker {worker} is unavailable: {message}", retriable=True)
        if status == 429:
            return UpstreamUnavailable(f"Worker {worker} is overloaded: {message}", retriable=True)
        if status in (408, 504):
            return UpstreamTimeout(f"Worker {worker} timed out: {message}")
        if 400 <= status < 500:
            return UpstreamRejected(message, upstream_status=status)
        return UpstreamUnavailable(f"Worker {worker} failed ({status}): {message}")

    async def read_body(self, worker: str, response: httpx.Response, *, wait_s: float) -> bytes:
        with map_upstream_errors(worker):
            async with asyncio.timeout(wait_s):
                return await response.aread()

    async def abort(self, worker: str, rid: str) -> None:
        """Tell the worker to stop `rid`. SGLang notices a vanished client only seconds later, so this matters."""
        try:
            response = await self._client.post(
                worker + "/abort_request", json={"rid": rid}, timeout=self._timeouts.abort_s
            )
            if response.status_code >= 400:
                log.warning("abort of %s on %s answered %s", rid, worker, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("abort of %s on %s failed: %s", rid, worker, type(exc).__name__)
