"""The relay: one admitted request's trip to a worker and back, as an ASGI response.

The exchange runs inside the response so that it can watch the client the whole time: if the client leaves,
whether the worker is still thinking (non-streaming) or streaming, the upstream call is dropped and the worker is
told to abort the live attempt's `rid`. Whatever happens, the `finally` settles the limiter, releases the worker
and reports the record, shielded from cancellation.

Before the first byte reaches the client a failure can still choose the status code, and a retriable one
(connect error, 503) is tried on another worker of the pool. After the first byte, nothing is retried; a failure
becomes a `data: {"error": ...}` event, and `[DONE]` ends the stream exactly once on every path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sparsegate.gateway.errors import (
    GatewayError,
    InternalError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_event,
    error_response,
)
from sparsegate.gateway.limits.base import Limiter, Reservation
from sparsegate.gateway.record import Observer, RequestRecord, server_timing
from sparsegate.gateway.routing import RoutePlan, Router, Worker
from sparsegate.gateway.settings import RetrySettings, Timeouts
from sparsegate.gateway.sse import DONE_EVENT, EventSplitter, StreamTally, event_data, frame
from sparsegate.gateway.upstream import Upstream, map_upstream_errors

log = logging.getLogger("sparsegate.relay")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no", "connection": "keep-alive"}


@dataclass
class Services:
    """The long-lived collaborators, built once in the lifespan."""

    router: Router
    upstream: Upstream
    limiter: Limiter
    observer: Observer
    timeouts: Timeouts
    retries: RetrySettings


@dataclass
class Job:
    """One admitted request, fully planned."""

    path: str
    rid: str  # gateway-minted id on the worker (SGLang uses it as the response id); retries derive from it
    payload: dict[str, Any]
    plan: RoutePlan
    affinity_key: str
    reservation: Reservation
    record: RequestRecord
    wants_usage: bool
    upstream_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Attempt:
    worker: Worker
    rid: str
    response: httpx.Response | None  # None while the worker has not answered yet


class Exchange(Response):
    """Streams or buffers one request through a worker; settles on every path."""

    def __init__(self, services: Services, job: Job) -> None:
        # Response.__init__ would render a body; this response writes its own.
        self.status_code = 200
        self.background = None
        self._services = services
        self._job = job
        self._attempt: _Attempt | None = None
        self._client_gone = False
        self._headers_sent = False
        self._response_done = False
        self._upstream_complete = False  # the worker finished its answer (whole body read, or the stream ended)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def watch_client() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            if not self._response_done:
                                self._client_gone = True
                                tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch_client)
                try:
                    await self._exchange(send)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()

    # -- the exchange ------------------------------------------------------------------------------------------

    async def _exchange(self, send: Send) -> None:
        record = self._job.record
        try:
            attempt = await self._open_with_retries()
            if self._job.payload.get("stream"):
                await self._relay_stream(send, attempt)
            else:
                await self._relay_whole(send, attempt)
        except GatewayError as exc:
            self._fail(exc)
            await self._send_error(send, exc)
        except Exception as exc:  # a gateway bug: log it; answer 500 if nothing was sent yet
            log.exception("relay failed for %s", record.request_id)
            self._fail(exc)
            await self._send_error(send, InternalError("The server had an error while processing your request."))

    async def _open_with_retries(self) -> _Attempt:
        job, svc = self._job, self._services
        record = job.record
        tried: list[str] = []
        last: GatewayError | None = None
        wait_s = svc.timeouts.first_byte_s if job.payload.get("stream") else svc.timeouts.total_s
        for n in range(svc.retries.max_attempts):
            try:
                worker = svc.router.pick_worker(job.plan.pool.name, job.affinity_key, exclude=tried)
            except GatewayError:
                if last is not None:
                    raise last from None
                raise
            # Every attempt gets its own rid on the worker, derived from the request id (the lineage), so an
            # abort always names the attempt that is actually running.
            rid = job.rid if n == 0 else f"{job.rid}-r{n}"
            record.worker, record.rid, record.attempts = worker.url, rid, n + 1
            payload = {**job.payload, "rid": rid}
            headers = dict(job.upstream_headers)
            record.trace.upstream_start(worker.url, rid, headers)
            started = time.perf_counter()
            try:
                response = await svc.upstream.open(worker.url, job.path, payload, headers, wait_s=wait_s)
            except UpstreamError as exc:
                record.upstream_s += time.perf_counter() - started
                record.trace.upstream_end(type(exc).__name__)
                svc.router.release(worker, _outcome_of(exc))
                svc.observer.on_upstream_attempt(record, worker.url, type(exc).__name__)
                if isinstance(exc, UpstreamTimeout):
                    # The worker may still be working on it: make sure it stops.
                    await svc.upstream.abort(worker.url, rid)
                if exc.retriable and n + 1 < svc.retries.max_attempts:
                    tried.append(worker.url)
                    last = exc
                    continue
                raise
            except UpstreamRejected:
                record.upstream_s += time.perf_counter() - started
                record.trace.upstream_end("UpstreamRejected")
                svc.router.release(worker, "client_error")
                svc.observer.on_upstream_attempt(record, worker.url, "UpstreamRejected")
                raise
            except BaseException:
                # Cancelled (client gone) while waiting: the attempt may be live on the worker, so keep it for abort.
                record.upstream_s += time.perf_counter() - started
                self._attempt = _Attempt(worker, rid, None)
                raise
            record.upstream_s += time.perf_counter() - started
            svc.observer.on_upstream_attempt(record, worker.url, None)
            self._attempt = _Attempt(worker, rid, response)
            return self._attempt
        assert last is not None
        raise last

    async def _relay_whole(self, send: Send, attempt: _Attempt) -> None:
        job, svc = self._job, self._services
        record = job.record
        assert attempt.response is not None
        started = time.perf_counter()
        try:
            body = await svc.upstream.read_body(attempt.worker.url, attempt.response, wait_s=svc.timeouts.total_s)
        except UpstreamError as exc:
            record.upstream_s += time.perf_counter() - started
            self._fail(exc)
            await self._send_error(send, exc)
            return
        record.upstream_s += time.perf_counter() - started
        self._upstream_complete = True
        self._account_whole(body)
        headers = {**job.response_headers, "content-type": "application/json", "server-timing": server_timing(record)}
        record.status = 200
        record.first_byte_at = time.perf_counter()
        await self._send_start(send, 200, _raw(headers, len(body)))
        await self._send_last(send, body)

    def _account_whole(self, body: bytes) -> None:
        record = self._job.record
        try:
            obj = json.loads(body)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            record.prompt_tokens = int(usage.get("prompt_tokens") or record.prompt_tokens)
            record.completion_tokens = int(usage.get("completion_tokens") or 0)
            record.usage_from_worker = True
        record.response_id = obj.get("id") if isinstance(obj.get("id"), str) else None
        record.finish_reasons = [
            str(c.get("finish_reason"))
            for c in obj.get("choices") or []
            if isinstance(c, dict) and c.get("finish_reason")
        ]

    async def _relay_stream(self, send: Send, attempt: _Attempt) -> None:
        job, _svc = self._job, self._services
        record = job.record
        assert attempt.response is not None
        tally = StreamTally(wants_usage=job.wants_usage)
        splitter = EventSplitter()
        headers = {
            **job.response_headers,
            **SSE_HEADERS,
            "content-type": "text/event-stream; charset=utf-8",
            "server-timing": server_timing(record),
        }
        record.status = 200
        failure: GatewayError | None = None
        # httpx's aiter_bytes is an async generator; closing it explicitly keeps its finalizer off the GC.
        chunks = aclosing(cast("AsyncGenerator[bytes, None]", attempt.response.aiter_bytes()))
        try:
            await self._send_start(send, 200, _raw(headers, None))
            try:
                async with chunks as stream:
                    with map_upstream_errors(attempt.worker.url):
                        await self._pump(send, stream, splitter, tally)
            except UpstreamError as exc:
                failure = exc
        finally:
            # Runs on cancellation too (client gone), so a cut stream is still counted for settling.
            self._account_stream(tally)
        self._upstream_complete = tally.done or _all_finished(tally, job.payload)
        if failure is None and not self._upstream_complete and tally.upstream_error is None:
            failure = UpstreamUnavailable(f"The stream from worker {attempt.worker.url} ended before it was complete.")
        if tally.upstream_error is not None and failure is None:
            record.outcome, record.error_type = "error", "UpstreamStreamError"
        tail = b""
        if failure is not None:
            self._fail(failure)
            tail = error_event(failure)
        await self._send_last(send, tail + DONE_EVENT)

    async def _pump(
        self, send: Send, chunks: AsyncIterator[bytes], splitter: EventSplitter, tally: StreamTally
    ) -> None:
        """Forward upstream events as they complete, each wait bounded (first event, then between events)."""
        svc, record = self._services, self._job.record
        wait_s = svc.timeouts.first_byte_s
        while not tally.done:
            waited = time.perf_counter()
            try:
                async with asyncio.timeout(wait_s):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            finally:
                record.upstream_s += time.perf_counter() - waited
            wait_s = svc.timeouts.read_s
            out = []
            for event in splitter.feed(chunk):
                data = event_data(event)
                if data is None:
                    out.append(event + b"\n\n")  # comments and keep-alives pass through
                    continue
                forwarded = tally.take(data)
                if forwarded is not None:
                    out.append(frame(forwarded))
            if out:
                now = time.perf_counter()
                if record.first_byte_at is None:
                    record.first_byte_at = now
                record.chunks += len(out)
                svc.observer.on_chunk(record, now)
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})

    def _account_stream(self, tally: StreamTally) -> None:
        record = self._job.record
        record.response_id = tally.response_id
        record.finish_reasons = [tally.finish_reasons[i] for i in sorted(tally.finish_reasons)]
        if tally.usage is not None:
            record.prompt_tokens = tally.usage.get("prompt_tokens", record.prompt_tokens)
            record.completion_tokens = tally.usage.get("completion_tokens", tally.content_events)
            record.usage_from_worker = True
        else:
            # Cut short: count what was relayed. SGLang streams one token per event by default.
            record.completion_tokens = tally.content_events

    # -- endings -------------------------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        record = self._job.record
        record.outcome = "error"
        record.error_type = type(exc).__name__
        if record.first_byte_at is None and isinstance(exc, GatewayError):
            record.status = exc.status_code
        elif record.first_byte_at is None:
            record.status = 500

    async def _send_error(self, send: Send, exc: GatewayError) -> None:
        if self._client_gone or self._response_done:
            return
        if self._headers_sent:
            # Too late for a status code: the stream carries the error, then ends properly.
            await self._send_last(send, error_event(exc) + DONE_EVENT)
            return
        self._job.record.first_byte_at = time.perf_counter()
        response = error_response(exc, self._job.response_headers)
        await self._send_start(send, response.status_code, response.raw_headers)
        await self._send_last(send, bytes(response.body))

    async def _send_start(self, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers_sent = True
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _send_last(self, send: Send, body: bytes) -> None:
        # Marked before sending: once the response is complete, the server answers `receive()` with
        # http.disconnect, which must not be mistaken for a client that left.
        self._response_done = True
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _finish(self) -> None:
        job, svc = self._job, self._services
        record = job.record
        attempt = self._attempt
        if self._client_gone:
            record.outcome, record.error_type = "cancelled", "ClientDisconnected"
            if record.first_byte_at is None:
                record.status = 499  # nginx's "client closed request": nothing was sent
        try:
            if attempt is not None:
                if attempt.response is not None:
                    await attempt.response.aclose()
                if not self._upstream_complete:
                    # Dropped before the worker finished (client gone, stall, gateway error): SGLang would notice
                    # the closed connection only seconds later, so tell it now.
                    await svc.upstream.abort(attempt.worker.url, attempt.rid)
                svc.router.release(attempt.worker, _final_outcome(record.outcome))
            # Charge what the worker did: the prompt and the tokens generated. A request that failed before it
            # produced anything is refunded whole; a disconnect pays for the prompt and what was streamed.
            nothing_done = record.outcome == "error" and record.completion_tokens == 0
            used = 0 if attempt is None or nothing_done else record.prompt_tokens + record.completion_tokens
            await svc.limiter.settle(job.reservation, used)
        except Exception:
            log.exception("settling %s failed", record.request_id)
        finally:
            record.ended_at = time.perf_counter()
            try:
                svc.observer.on_finish(record)
            except Exception:
                log.exception("observer failed for %s", record.request_id)


def _final_outcome(outcome: str) -> Literal["ok", "cancelled", "upstream_error"]:
    if outcome == "ok":
        return "ok"
    return "cancelled" if outcome == "cancelled" else "upstream_error"


def _all_finished(tally: StreamTally, payload: dict[str, Any]) -> bool:
    n = int(payload.get("n") or 1)
    return len(tally.finish_reasons) >= n


def _outcome_of(exc: UpstreamError) -> Literal["timeout", "connect_error", "upstream_error"]:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    return "connect_error" if exc.retriable else "upstream_error"


def _raw(headers: dict[str, str], length: int | None) -> list[tuple[bytes, bytes]]:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return raw
