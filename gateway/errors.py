"""The gateway's one exception tree, and the one place that turns it into OpenAI's error envelope.

Routes, the limiter, the router and the relay raise these; nothing else in the gateway builds error JSON.

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── ContextLengthExceeded     400 code=context_length_exceeded, param=messages
    │   └── UpstreamRejected          400 the worker refused the request with a 4xx (its message is passed on)
    ├── RequestTooLarge               413 code=request_too_large
    ├── RequestHeadersTooLarge        431 code=request_headers_too_large
    ├── AuthenticationFailed          401 code=invalid_api_key
    ├── ModelNotAllowed               403 code=model_not_allowed
    ├── ModelNotFound                 404 code=model_not_found
    ├── RouteNotFound                 404 / 405 (unknown path or method)
    ├── ResourceNotFound              404 an admin API tenant or key that does not exist
    │   └── ResponseNotFound          404 a stored response the tenant does not own (or that expired)
    ├── RateLimited                   429 type=requests|tokens, code=rate_limit_exceeded
    │   ├── QuotaExceeded             429 type=code=insufficient_quota, a token budget is spent (no retry)
    │   └── QueueFull                 429 the tenant's fair queue for the pool is at its bound
    ├── UpstreamError                 502 server_error; `outcome` says whose fault it was (see below)
    │   ├── UpstreamUnavailable       502 refused, reset, 5xx, bad upstream response
    │   │   ├── UpstreamNotReady      503 the worker answered 503 (full, paused, draining), with retry-after
    │   │   └── UpstreamAborted       502 the worker ended the answer with finish_reason "abort" on its own
    │   ├── UpstreamStreamError       the worker's own mid-stream error event, in OpenAI's types
    │   ├── UpstreamTimeout           504
    │   └── UpstreamBusy              429 the worker's queue is full (its 429), with retry-after
    ├── NoHealthyWorker               503 (with retry-after)
    ├── Overloaded                    503 this gateway process is at its bound; shed before admission
    ├── QueueTimeout                  503 the pool stayed saturated for the request's whole queue wait
    ├── LimiterUnavailable            503 the limiter is down and the tenant's policy is fail_closed
    ├── AdminStoreUnavailable         503 the admin state could not be saved (nothing changed)
    └── InternalError                 500 a gateway bug; never for bad input

Blame: an `UpstreamError.outcome` is what the worker's breaker hears. Only "refused", "reset", "server_error" and
"timeout" (a deadline measured in fair time, from when the request was handed to the socket) count against the
worker; "busy" (its 429) is neutral. A request the gateway cannot encode never becomes an UpstreamError at all: it is
an InvalidRequest (the client's fault), raised before any worker is picked.

A dependency's own exceptions (httpx, aiohttp, redis) are translated at one boundary each: `upstream/` for the
HTTP clients and `limits/` for redis.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# A URL in a message is an internal host (a worker, Redis): operators see it in the logs, clients never do.
_INTERNAL_URL = re.compile(r"\s*\b(?:https?|redis|rediss|unix)://[^\s,;)]*?(?=[.,;:)]?(?:\s|$))")


def client_message(message: str) -> str:
    """The message as a client may read it: without internal host names (`worker http://10.0.0.5:30000 failed`
    becomes `worker failed`). Every client-facing error body (`envelope`, the dialects') uses `public_message`."""
    return _INTERNAL_URL.sub("", message)


class GatewayError(Exception):
    """Base of every error the gateway answers with; knows its HTTP status and OpenAI `type`/`code`."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self._code = code
        self.detail: str | None = None  # for the logs only (a worker's own words); never sent to a client

    @property
    def error_type(self) -> str:
        return type(self).type

    @property
    def error_code(self) -> str | None:
        return self._code if self._code is not None else type(self).code

    @property
    def status_code(self) -> int:
        return type(self).status

    def headers(self) -> dict[str, str]:
        """Extra response headers (retry hints); empty unless a subclass has something to say."""
        return {}

    @property
    def public_message(self) -> str:
        """The message as the client reads it (no internal hosts); `message` is the operator's, for logs."""
        return client_message(self.message)

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.public_message,
                "type": self.error_type,
                "param": self.param,
                "code": self.error_code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, *, max_context: int, prompt_tokens: int, completion_tokens: int) -> None:
        total = prompt_tokens + completion_tokens
        super().__init__(
            f"This model's maximum context length is {max_context} tokens. However, you requested {total} tokens "
            f"({prompt_tokens} in the messages, {completion_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
        )
        self.max_context = max_context
        self.requested = total


class UpstreamRejected(InvalidRequest):
    """The worker answered 4xx before streaming: the client's request was at fault. Clients see OpenAI's 400
    whatever the worker's status (SGLang answers 400 or 422 for the same kind of mistake); the worker's own status
    stays in `upstream_status` for the logs. A worker's 429 is not this: it is `UpstreamBusy`."""

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestHeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotAllowed(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int = 404) -> None:
        super().__init__(message)
        self._status = status

    @property
    def status_code(self) -> int:
        return self._status


class ResourceNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ResponseNotFound(ResourceNotFound):
    """A stored response this tenant does not own (another tenant's, expired, or never made): the same 404."""


class RateLimited(GatewayError):
    """A tenant limit was hit. `kind` is the OpenAI type: "requests" or "tokens" (concurrency counts as requests)."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        retry_after_s: float | None,
        can_ever_fit: bool = True,
        rate_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.can_ever_fit = can_ever_fit
        self.rate_headers = dict(rate_headers or {})

    @property
    def error_type(self) -> str:
        return self.kind

    def headers(self) -> dict[str, str]:
        out = dict(self.rate_headers)
        if not self.can_ever_fit:
            # Retrying cannot help: the request needs more than the whole bucket holds.
            out["x-should-retry"] = "false"
        elif self.retry_after_s is not None:
            out.update(_retry_headers(self.retry_after_s))
        return out


class QuotaExceeded(RateLimited):
    """A token budget (per day or month) is spent: OpenAI's `insufficient_quota`. Retrying before the reset cannot
    help, so the SDK is told not to (`x-should-retry: false`); `retry-after` is not sent."""

    code = "insufficient_quota"

    def __init__(self, message: str, *, rate_headers: dict[str, str] | None = None) -> None:
        super().__init__(message, kind="insufficient_quota", retry_after_s=None, can_ever_fit=False,
                         rate_headers=rate_headers)  # fmt: skip


class QueueFull(RateLimited):
    """The tenant already has as many requests waiting for the pool as its queue holds: its own flood, so a 429."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, kind="requests", retry_after_s=retry_after_s)


UpstreamOutcome = Literal["refused", "reset", "server_error", "timeout", "busy", "bad_response", "rejected"]
# What counts against a worker's breaker; anything else is neutral for it.
WORKER_FAULTS: frozenset[str] = frozenset({"refused", "reset", "server_error", "timeout", "bad_response"})


class UpstreamError(GatewayError):
    """The worker failed. `retriable` marks failures that happened before the worker took the request
    (refused connects, 503 from a full or draining worker, 429), which are safe to send to another worker.
    `outcome` is what the worker's breaker is told (see the module docstring)."""

    status = 502

    def __init__(self, message: str, *, retriable: bool = False, outcome: UpstreamOutcome = "server_error") -> None:
        super().__init__(message)
        self.retriable = retriable
        self.outcome: UpstreamOutcome = outcome

    @property
    def blames_worker(self) -> bool:
        return self.outcome in WORKER_FAULTS


class UpstreamUnavailable(UpstreamError):
    status = 502


class UpstreamNotReady(UpstreamUnavailable):
    """The worker answered 503 before the first byte (its queue is full, it is paused or draining). Retried on
    another worker; when none is left the client gets 503 with a short wait, as for a gateway without workers."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)

    def headers(self) -> dict[str, str]:
        return _retry_headers(1.0)


class UpstreamAborted(UpstreamUnavailable):
    """The worker ended the answer with `finish_reason: "abort"` that the client did not cause (an abort the client
    causes is never read: the relay is cancelled first). Not among OpenAI's finish reasons, so it is an error."""

    def __init__(self, message: str = "The worker aborted the request before it was complete.") -> None:
        super().__init__(message, outcome="server_error")


class UpstreamStreamError(UpstreamError):
    """The worker's own error event in a stream (SGLang: `{"error": {"type": "SERVICE_UNAVAILABLE", "code": 503}}`),
    rewritten into OpenAI's types: a worker 4xx is the request's fault (`invalid_request_error`, the worker is not
    blamed), anything else is `server_error`. Only ever sent as an event, so the status is for the record."""

    def __init__(self, message: str, *, worker_status: int) -> None:
        client_fault = 400 <= worker_status < 500 and worker_status != 429
        super().__init__(message, outcome="rejected" if client_fault else "server_error")
        self.worker_status = worker_status

    @property
    def status_code(self) -> int:
        return 400 if self.outcome == "rejected" else 502

    @property
    def error_type(self) -> str:
        return "invalid_request_error" if self.outcome == "rejected" else "server_error"


class UpstreamTimeout(UpstreamError):
    status = 504

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message, retriable=retriable, outcome="timeout")


class UpstreamBusy(UpstreamError):
    """The worker answered 429: its queue is full. Not the worker's fault and not the client's; retried on another
    worker, and passed on as 429 with the worker's wait (or one second) when none is left."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retriable=True, outcome="busy")
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return _retry_headers(self.retry_after_s)


class NoHealthyWorker(GatewayError):
    status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, round(self.retry_after_s)))}


class Overloaded(GatewayError):
    """This process is at its in-flight or event-loop-lag bound. Answered before admission (nothing charged), fast,
    and never blamed on a worker."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return _retry_headers(self.retry_after_s)


class QueueTimeout(GatewayError):
    """A request waited in the fair queue for as long as it may (queue bound or first-byte deadline). Shed before any
    worker saw it: nothing is charged, and no worker is blamed."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return _retry_headers(self.retry_after_s)


class LimiterUnavailable(GatewayError):
    status = 503

    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class AdminStoreUnavailable(GatewayError):
    status = 503

    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class InternalError(GatewayError):
    status = 500


def _retry_headers(wait_s: float) -> dict[str, str]:
    wait_ms = max(1, int(wait_s * 1000 + 0.999))
    return {"retry-after-ms": str(wait_ms), "retry-after": str(max(1, (wait_ms + 999) // 1000))}


def error_body(exc: GatewayError) -> bytes:
    return orjson.dumps(exc.envelope())


def raw_error(
    exc: GatewayError, extra_headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw ASGI headers and body of the envelope, for the plain-ASGI hot path."""
    body = error_body(exc)
    headers = {**(extra_headers or {}), **exc.headers()}
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-type", b"application/json"))
    raw.append((b"content-length", str(len(body)).encode()))
    return exc.status_code, raw, body


def error_response(exc: GatewayError, extra_headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {**(extra_headers or {}), **exc.headers()}
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=headers)


def error_event(exc: GatewayError) -> bytes:
    """The same envelope as one SSE event, for failures after the first streamed byte."""
    return b"data: " + error_body(exc) + b"\n\n"


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence for FastAPI's validation errors, and the offending top-level parameter."""
    parts: list[str] = []
    param: str | None = None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        if param is None and loc:
            param = loc[0]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return f"We could not parse the JSON body of your request: {ctx.get('error', 'invalid JSON')}.", None
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "Invalid request: " + "; ".join(parts), param


def to_gateway_error(exc: Exception) -> GatewayError:
    """Map anything an ASGI handler can raise onto the tree; unknown exceptions are gateway bugs (500)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, RequestValidationError):
        message, param = describe_validation_error(exc)
        return InvalidRequest(message, param=param)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 413:
            return RequestTooLarge(str(exc.detail))
        if exc.status_code in (404, 405):
            return RouteNotFound(str(exc.detail), status=exc.status_code)
        if 400 <= exc.status_code < 500:
            return InvalidRequest(str(exc.detail))
    return InternalError("The server had an error while processing your request.")


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    """The single exception handler registered for every exception class."""
    from sparsegate.gateway.dialects import OPENAI, dialect_for_path  # dialects builds on this module

    err = to_gateway_error(exc)
    extra = getattr(request.state, "rate_headers", None)
    dialect = dialect_for_path(request.url.path)
    if dialect is OPENAI:
        return error_response(err, extra if isinstance(extra, dict) else None)
    # e.g. a wrong method on /v1/messages: still the envelope that API's clients parse
    headers = dialect.rate_headers({**(extra if isinstance(extra, dict) else {}), **err.headers()})
    return JSONResponse(dialect.envelope(err), status_code=err.status_code, headers=headers)
