"""One request's context, owned by the pipeline from auth to settle.

Everything a layer learns goes here (the `RequestRecord` that observers read is part of it), so nothing rides on
framework request state and the pipeline's one `finally` finds all it needs to settle and report.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sparsegate.gateway.dialects import OPENAI, Dialect, TypedTally
from sparsegate.gateway.errors import GatewayError
from sparsegate.gateway.limits.base import Reservation
from sparsegate.gateway.record import RequestRecord
from sparsegate.gateway.routing import RoutePlan, Worker
from sparsegate.gateway.upstream import UpstreamResponse
from sparsegate.gateway.wire import Send

# Ids: a per-process random prefix and a counter. Unique across replicas and processes (12 hex digits of
# randomness), and far cheaper than a uuid4 per request. The counter has a fixed width because SGLang's scheduler
# aborts every request whose rid *starts with* the aborted one: with `...1` and `...10` both running, aborting the
# first would stop the second, another client's request.
_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def mint_id(kind: str) -> str:
    return f"{kind}-{_PREFIX}{next(_COUNTER):012x}"


@dataclass(slots=True)
class Job:
    """One admitted request, fully planned, as the relay sends it."""

    path: str
    rid: str  # gateway-minted id on the worker (SGLang uses it as the response id); retries derive from it
    body: bytes  # the payload as JSON, without `rid` (each attempt adds its own)
    stream: bool
    n: int  # choices in the answer: n, times the prompts of a completions batch
    plan: RoutePlan
    affinity_key: str
    wants_usage: bool
    upstream_headers: dict[str, str] = field(default_factory=dict)
    expands_rid: bool = False  # SGLang runs one request per choice, `rid_0 … rid_{n-1}` (relay/mend.py)
    dialect: Dialect = OPENAI  # how the answer looks to the client (dialects.py)
    method: str = "POST"
    rid_field: str | None = "rid"  # the body field SGLang takes the attempt's id from; None: the API has none
    pinned_worker: str | None = None  # a stored response's worker: only it can answer, so no retries elsewhere
    on_opened: Callable[[Attempt], Awaitable[None]] | None = None  # run once a worker has accepted the request

    def body_for(self, rid: str) -> bytes:
        if self.rid_field is None or not self.body:
            return self.body
        # The payload is a non-empty JSON object; splice the attempt's rid in instead of encoding it again.
        return self.body[:-1] + b',"' + self.rid_field.encode() + b'":"' + rid.encode() + b'"}'


@dataclass(slots=True)
class Attempt:
    worker: Worker
    rid: str
    response: UpstreamResponse | None  # None while the worker has not answered yet


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: str
    record: RequestRecord
    task: asyncio.Task[Any] | None
    response_headers: dict[str, str] = field(default_factory=dict)  # x-request-id and the rate-limit headers
    reservation: Reservation | None = None
    job: Job | None = None
    attempt: Attempt | None = None
    headers_sent: bool = False
    response_done: bool = False  # the last body message is on its way: a disconnect now is the normal end
    upstream_complete: bool = False  # the worker finished its answer (nothing to abort)
    client_gone: bool = False
    relaying: bool = False  # only while True may the client watcher interrupt the task
    failure: BaseException | None = None
    dialect: Dialect = OPENAI  # the API's wire shape, for the errors answered on its behalf
    tally: TypedTally | None = None  # a typed stream's tally, so a late error event can continue it
    _interrupted: bool = False

    def fail(self, exc: BaseException) -> None:
        record = self.record
        self.failure = exc
        record.outcome = "error"
        record.error_type = type(exc).__name__
        if isinstance(exc, GatewayError):  # the whole story, internal hosts included, for the log line
            record.error_detail = exc.message if exc.detail is None else f"{exc.message} {exc.detail}"
        if record.first_byte_at is None:
            record.status = exc.status_code if isinstance(exc, GatewayError) else 500

    async def start_response(self, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers_sent = True
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def send_last(self, send: Send, body: bytes) -> None:
        # Marked before sending: once the response is complete the server answers `receive()` with
        # http.disconnect, which must not be mistaken for a client that left.
        self.response_done = True
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def interrupt(self) -> None:
        """The client left: cancel the request's task once, while it relays."""
        if self.relaying and not self._interrupted and self.task is not None:
            self._interrupted = True
            self.task.cancel()

    def take_interrupt(self) -> bool:
        """True (and the cancel taken back) when a CancelledError was our own `interrupt`."""
        if not self._interrupted or self.task is None:
            return False
        self._interrupted = False
        self.task.uncancel()
        return True
