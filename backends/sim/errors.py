"""The simulator's one exception tree, and the one function that turns it into SGLang's error body.

Routes raise these; only `error_response` builds error JSON. The body is SGLang's `ErrorResponse`
(`{"object": "error", "message", "type", "param", "code"}`), not OpenAI's `{"error": {...}}` envelope,
because the gateway must cope with what a real worker sends.

    SimError                     500 InternalServerError
    ├── BadRequest               400 BadRequest (malformed JSON, wrong types, bad values, duplicate rid)
    │   └── ContextLengthExceeded 400 BadRequest, SGLang's own wording
    ├── NotFound                 404 (unknown path) / 405 (wrong method)
    ├── InjectedFailure          the `error_status` fault (500 unless told), answered before any byte
    └── Unhealthy                503 the `unhealthy` fault
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar, Literal

from fastapi.responses import JSONResponse

#: How a failed request is counted in `/sim/stats`: bad input is `rejected`, the worker's own fault is `failed`.
Outcome = Literal["rejected", "failed"]


def status_phrase(status: int) -> str:
    """SGLang's error `type` for a status: the reason phrase without spaces (`ServiceUnavailable`)."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return str(status)


class SimError(Exception):
    """Base of every error the simulator answers with; knows its status and how `/sim/stats` counts it."""

    status: ClassVar[int] = 500
    outcome: ClassVar[Outcome] = "failed"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status if status is not None else type(self).status


class BadRequest(SimError):
    """The request is malformed or asks for something the worker will not do."""

    status = 400
    outcome = "rejected"


class ContextLengthExceeded(BadRequest):
    """Prompt tokens (plus `max_tokens` when given) exceed `--max-context`."""


class NotFound(SimError):
    """No such route (404) or no such method on it (405)."""

    status = 404
    outcome = "rejected"


class InjectedFailure(SimError):
    """The `error_rate` fault fired; the status is the configured `error_status`."""


class Unhealthy(SimError):
    """The `unhealthy` fault is on: generation and health checks answer 503."""

    status = 503


def error_body(status: int, message: str) -> dict[str, Any]:
    """SGLang's `ErrorResponse` for one status and message."""
    return {"object": "error", "message": message, "type": status_phrase(status), "param": None, "code": status}


def error_response(exc: SimError) -> JSONResponse:
    """The one place a `SimError` becomes an HTTP response."""
    return JSONResponse(error_body(exc.status_code, exc.message), status_code=exc.status_code)
