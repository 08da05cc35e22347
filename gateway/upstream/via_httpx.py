"""The upstream protocol over httpx: for tests (an ASGI app or `httpx.MockTransport` as the worker).

The one place that sees httpx's exceptions on the request path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager

import httpx

from sparsegate.gateway.errors import GatewayError, UpstreamUnavailable

log = logging.getLogger("sparsegate.upstream")


@contextmanager
def map_httpx_errors(worker: str) -> Iterator[None]:
    try:
        yield
    except GatewayError:
        raise
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UpstreamUnavailable(f"Could not connect to worker {worker}.", retriable=True, outcome="refused") from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise UpstreamUnavailable(
            f"The connection to worker {worker} failed: {type(exc).__name__}.", outcome="reset"
        ) from exc


class HttpxResponse:
    __slots__ = ("_response", "_worker", "status")

    def __init__(self, worker: str, response: httpx.Response) -> None:
        self._worker = worker
        self._response = response
        self.status = response.status_code

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    async def read(self) -> bytes:
        with map_httpx_errors(self._worker):
            return await self._response.aread()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        with map_httpx_errors(self._worker):
            async for chunk in self._response.aiter_raw():
                yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """The upstream client on an `httpx.AsyncClient` (shared with the health prober)."""

    def __init__(self, client: httpx.AsyncClient, *, connect_s: float, abort_s: float) -> None:
        self._client = client
        self._timeout = httpx.Timeout(connect=connect_s, read=None, write=30.0, pool=None)
        self._abort_s = abort_s

    async def post(
        self, worker: str, path: str, body: bytes, headers: dict[str, str], *, method: str = "POST"
    ) -> HttpxResponse:
        request = self._client.build_request(
            method,
            worker + path,
            content=body,
            headers={**headers, "content-type": "application/json"},
            timeout=self._timeout,
        )
        with map_httpx_errors(worker):
            response = await self._client.send(request, stream=True)
        return HttpxResponse(worker, response)

    async def abort(self, worker: str, rid: str) -> None:
        try:
            response = await self._client.post(worker + "/abort_request", json={"rid": rid}, timeout=self._abort_s)
            if response.status_code >= 400:
                log.warning("abort of %s on %s answered %s", rid, worker, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("abort of %s on %s failed: %s", rid, worker, type(exc).__name__)

    async def close(self) -> None:
        return None  # the client belongs to the app's lifespan
