"""The simulator's one exception tree, and the one function that turns it into SGLang's error body.

Routes raise these; only `error_response` builds error JSON. The body is SGLang's `ErrorResponse`
(`{"object": "error", "message", "type", "param", "code"}` with an integer `code`), not OpenAI's
`{"error": {...}}` envelope, because the gateway must cope with what a real worker sends. SGLang 0.5.23
picks `type` by the path an error takes, and so does each class here:

    SimError                      500 "InternalServerError"
    ├── InvalidBody               400 "Bad Request"      malformed JSON, wrong types (http_server's
    │                                                     RequestValidationError handler: the phrase)
    ├── BadRequest                400 "BadRequest"       a ValueError in serving (serving_base.handle_request)
    │   └── ContextLengthExceeded 400 "BadRequest"       tokenizer_manager's own wording
    ├── InvalidRequest            400 "BadRequestError"  `_validate_request` (tools / tool_choice checks)
    └── HTTPError                 any "<status>"         fastapi.HTTPException (http_server's handler:
        ├── NotFound              404 / 405               `type=str(status_code)`)
        ├── InjectedFailure       the `error_status` fault (500 unless told), answered before any byte
        ├── Unhealthy             503 the `unhealthy` fault
        └── WorkerAbort           a non-streamed request the worker aborted with a status (abort_status)

Mid-stream, an abort with a status is an event `{"error": {ErrorResponse}}` whose `type` is the status
name (`SERVICE_UNAVAILABLE`), as `serving_chat._generate_chat_stream` writes it (`stream_error_event`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar, Literal

from fastapi.responses import JSONResponse

#: How a failed request is counted in `/sim/stats`: bad input is `rejected`, the worker's own fault is `failed`.
Outcome = Literal["rejected", "failed"]


class SimError(Exception):
    """Base of every error the simulator answers with; knows its status and how `/sim/stats` counts it."""

    status: ClassVar[int] = 500
    outcome: ClassVar[Outcome] = "failed"
    error_type: ClassVar[str | None] = "InternalServerError"
    """SGLang's `type` for this error; None means `str(status)` (its HTTPException handler)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status if status is not None else type(self).status

    @property
    def type_name(self) -> str:
        """The `type` field of the error body."""
        return self.error_type if self.error_type is not None else str(self.status_code)


class InvalidBody(SimError):
    """The body is not JSON, or a field has the wrong type (SGLang's pydantic validation fails)."""

    status = 400
    outcome = "rejected"
    error_type = "Bad Request"


class BadRequest(SimError):
    """The request asks for something the worker will not do (a ValueError inside SGLang's serving)."""

    status = 400
    outcome = "rejected"
    error_type = "BadRequest"


class ContextLengthExceeded(BadRequest):
    """Prompt tokens (plus `max_tokens` when given) exceed `--max-context`."""


class InvalidRequest(SimError):
    """A check of SGLang's `_validate_request` failed (tools and tool_choice)."""

    status = 400
    outcome = "rejected"
    error_type = "BadRequestError"


class HTTPError(SimError):
    """An error SGLang raises as `fastapi.HTTPException`: `type` is the status as a string."""

    error_type = None


class NotFound(HTTPError):
    """No such route (404) or no such method on it (405)."""

    status = 404
    outcome = "rejected"


class InjectedFailure(HTTPError):
    """The `error_rate` fault fired; the status is the configured `error_status`."""


class Unhealthy(HTTPError):
    """The `unhealthy` fault is on: generation and health checks answer 503."""

    status = 503


class WorkerAbort(HTTPError):
    """The worker aborted a non-streamed request with a status (`abort_status` fault, or shutdown)."""

    status = 503


def error_body(exc: SimError) -> dict[str, Any]:
    """SGLang's `ErrorResponse` for this error."""
    return {"object": "error", "message": exc.message, "type": exc.type_name, "param": None, "code": exc.status_code}


def stream_error_event(message: str, status: int) -> dict[str, Any]:
    """An abort with a status after the first byte: `{"error": ErrorResponse}`, `type` the status name."""
    try:
        name = HTTPStatus(status).name
    except ValueError:
        name = str(status)
    return {"error": {"object": "error", "message": message, "type": name, "param": None, "code": status}}


def error_response(exc: SimError) -> JSONResponse:
    """The one place a `SimError` becomes an HTTP response."""
    return JSONResponse(error_body(exc), status_code=exc.status_code)
