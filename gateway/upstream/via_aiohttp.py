"""The upstream protocol over aiohttp: what production uses (the benchmark chose it; see upstream/__init__.py).

The one place that sees aiohttp's exceptions. A new connection's connect is bounded in fair time (overload.py), so
a worker is never marked down because this process was too busy to finish its own connect; no other aiohttp
timeout is set (the relay bounds every wait).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson

from sparsegate.gateway.errors import GatewayError, UpstreamUnavailable
from sparsegate.gateway.overload import FairDeadline, LoopMonitor

log = logging.getLogger("sparsegate.upstream")

# Below uvicorn's (and so SGLang's) 5 s keep-alive: a connection we reuse is never one the worker is closing.
KEEPALIVE_S = 4.0
_JSON = {"content-type": "application/json"}


@contextmanager
def map_aiohttp_errors(worker: str, *, before_headers: bool = False) -> Iterator[None]:
    try:
        yield
    except GatewayError:
        raise
    except TimeoutError as exc:  # the fair connect deadline
        raise UpstreamUnavailable(
            f"Could not connect to worker {worker} in time.", retriable=True, outcome="refused"
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(f"Could not connect to worker {worker}.", retriable=True, outcome="refused") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamUnavailable(
            f"Worker {worker} closed the connection.", retriable=before_headers, outcome="reset"
        ) from exc
    except aiohttp.ClientResponseError as exc:
        raise UpstreamUnavailable(f"Worker {worker} sent a malformed response.", outcome="bad_response") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(
            f"The connection to worker {worker} failed: {type(exc).__name__}.", outcome="reset"
        ) from exc


class _FairConnector(aiohttp.TCPConnector):
    def __init__(self, monitor: LoopMonitor, connect_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._monitor = monitor
        self._connect_s = connect_s

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 (aiohttp's)
        async with FairDeadline(self._monitor, self._connect_s):
            return await super()._create_connection(req, traces, timeout)


class AiohttpResponse:
    __slots__ = ("_done", "_response", "_worker", "status")

    def __init__(self, worker: str, response: aiohttp.ClientResponse) -> None:
        self._worker = worker
        self._response = response
        self._done = False
        self.status = response.status

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    async def read(self) -> bytes:
        with map_aiohttp_errors(self._worker):
            body = await self._response.read()
        self._done = True
        return body

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        content = self._response.content
        with map_aiohttp_errors(self._worker):
            while True:
                data = await content.readany()
                if not data:
                    self._done = True
                    return
                yield data

    async def aclose(self) -> None:
        if self._done:
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()  # cut short: the connection cannot be reused


class AiohttpUpstream:
    """One aiohttp session for every worker, with an unbounded keep-alive pool."""

    def __init__(self, monitor: LoopMonitor, *, connect_s: float, abort_s: float) -> None:
        connector = _FairConnector(monitor, connect_s, limit=0, keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self._abort_timeout = aiohttp.ClientTimeout(total=abort_s)

    async def post(
        self, worker: str, path: str, body: bytes, headers: dict[str, str], *, method: str = "POST"
    ) -> AiohttpResponse:
        with map_aiohttp_errors(worker, before_headers=True):
            response = await self._session.request(method, worker + path, data=body, headers={**headers, **_JSON})
        return AiohttpResponse(worker, response)

    async def abort(self, worker: str, rid: str) -> None:
        try:
            async with self._session.post(
                worker + "/abort_request", data=orjson.dumps({"rid": rid}), headers=_JSON, timeout=self._abort_timeout
            ) as response:
                await response.read()
                if response.status >= 400:
                    log.warning("abort of %s on %s answered %s", rid, worker, response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("abort of %s on %s failed: %s", rid, worker, type(exc).__name__)

    async def close(self) -> None:
        await self._session.close()
