"""The client-facing shape of each API the gateway serves: errors, stream endings, usage and rate-limit headers.

Every request goes through the same layers; what differs between OpenAI's chat and completions, OpenAI's Responses
API, Anthropic's Messages API and the pass-through endpoints (embeddings, tokenize) is only how things look on the
wire. A `Dialect` holds exactly that, so the pipeline and the relay stay one path:

- `openai` (chat, completions, embeddings, tokenize): errors `{"error": {message, type, param, code}}`; a stream
  error is `data: {"error": ...}`; a stream ends with `data: [DONE]`.
- `responses`: the same envelope; a stream error is OpenAI's `event: error` (ResponseErrorEvent) then
  `event: response.failed` with the response as it stood; a stream ends with its terminal `response.*` event.
- `anthropic`: errors `{"type": "error", "error": {type, message}}`; a stream error is `event: error` then
  `event: message_stop`; a stream ends with `message_stop`.

Typed streams (`event:` lines) are relayed unchanged; `TypedTally` reads only the events that carry usage, the end,
or an error. Anthropic clients get `anthropic-ratelimit-*` headers (RFC 3339 reset times) from the same buckets as
OpenAI's `x-ratelimit-*`; `retry-after` is common to both.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from sparsegate.gateway.errors import GatewayError
from sparsegate.gateway.sse import DONE_EVENT

# Anthropic's error `type` for each status (its documented set; SGLang's anthropic handler uses the same map).
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "request_timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?$|^(\d+)ms$")


def parse_go_duration(text: str) -> float | None:
    """Seconds in one of OpenAI's Go-style durations ("1s", "6m0s", "20ms"); None when unreadable."""
    match = _DURATION.match(text)
    if match is None:
        return None
    hours, minutes, seconds, millis = match.groups()
    if millis is not None:
        return int(millis) / 1000
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class TypedTally:
    """What a typed event stream said about itself: usage, whether it ended, and an error if it sent one."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    content_events: int = 0
    done: bool = False
    upstream_error: dict[str, Any] | None = None
    response_id: str | None = None
    snapshot: dict[str, Any] | None = None  # Responses: the response object of `response.created`
    sequence: int = 0  # Responses: the next sequence number

    def take_event(self, name: str, data: bytes) -> None:
        """Account for one event (its `event:` name and `data:` payload)."""
        raise NotImplementedError


class ResponsesTally(TypedTally):
    CONTENT: ClassVar[tuple[str, ...]] = ("response.output_text.delta", "response.function_call_arguments.delta")
    TERMINAL: ClassVar[tuple[str, ...]] = (
        "response.completed",
        "response.incomplete",
        "response.failed",
        "response.cancelled",
    )

    def take_event(self, name: str, data: bytes) -> None:
        self.sequence += 1
        if name in self.CONTENT or name == "response.reasoning_text.delta":
            self.content_events += 1
            return
        if name not in self.TERMINAL and name not in ("response.created", "error"):
            return
        obj = _json(data)
        if name == "error":
            self.upstream_error = obj or {"message": "The worker reported an error."}
            return
        response = obj.get("response") if obj else None
        if not isinstance(response, dict):
            return
        if isinstance(response.get("id"), str):
            self.response_id = response["id"]
        if name == "response.created":
            self.snapshot = response
            return
        self.done = True
        if name == "response.failed":
            self.upstream_error = response.get("error") or {"message": "The response failed on the worker."}
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("input_tokens"))
            self.completion_tokens = _int(usage.get("output_tokens"))


class MessagesTally(TypedTally):
    def take_event(self, name: str, data: bytes) -> None:
        if name == "content_block_delta":
            self.content_events += 1
            return
        if name == "message_stop":
            self.done = True
            return
        if name not in ("message_start", "message_delta", "error"):
            return
        obj = _json(data) or {}
        if name == "error":
            error = obj.get("error")
            self.upstream_error = error if isinstance(error, dict) else {"message": "The worker reported an error."}
            return
        if name == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("id"), str):
                    self.response_id = message["id"]
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self.prompt_tokens = _int(usage.get("input_tokens"))
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if usage.get("input_tokens") is not None:
                self.prompt_tokens = _int(usage.get("input_tokens"))
            self.completion_tokens = _int(usage.get("output_tokens"))


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class WholeUsage:
    """Usage of a non-streamed answer, and its id."""

    prompt_tokens: int | None
    completion_tokens: int | None
    response_id: str | None = None


@dataclass(frozen=True)
class Dialect:
    """How one API looks on the wire (see the module docstring)."""

    name: str
    typed_stream: bool = False
    prompt_key: str = "prompt_tokens"
    completion_key: str = "completion_tokens"
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def done_event(self) -> bytes:
        return b"" if self.typed_stream else DONE_EVENT

    def envelope(self, exc: GatewayError) -> dict[str, Any]:
        return exc.envelope()

    def error_event(self, exc: GatewayError, tally: TypedTally | None = None) -> bytes:
        return b"data: " + json.dumps(exc.envelope(), separators=(",", ":")).encode() + b"\n\n"

    def rate_headers(self, headers: dict[str, str]) -> dict[str, str]:
        return headers

    def raw_error(
        self, exc: GatewayError, extra_headers: dict[str, str] | None = None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, raw ASGI headers and body of the error in this API's envelope (the plain-ASGI path)."""
        body = json.dumps(self.envelope(exc), separators=(",", ":")).encode()
        headers = self.rate_headers({**(extra_headers or {}), **exc.headers()})
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-type", b"application/json"))
        raw.append((b"content-length", str(len(body)).encode()))
        return exc.status_code, raw, body

    def new_tally(self) -> TypedTally | None:
        return None

    def whole_usage(self, body: bytes) -> WholeUsage:
        obj = _json(body) or {}
        usage = obj.get("usage")
        rid = obj.get("id") if isinstance(obj.get("id"), str) else None
        if not isinstance(usage, dict):
            return WholeUsage(None, None, rid)
        return WholeUsage(_int(usage.get(self.prompt_key)), _int(usage.get(self.completion_key)) or 0, rid)


@dataclass(frozen=True)
class ResponsesDialect(Dialect):
    name: str = "responses"
    typed_stream: bool = True
    prompt_key: str = "input_tokens"
    completion_key: str = "output_tokens"

    def new_tally(self) -> TypedTally:
        return ResponsesTally()

    def error_event(self, exc: GatewayError, tally: TypedTally | None = None) -> bytes:
        """OpenAI's `error` event, then `response.failed` carrying the response as it stood, so the SDK's stream
        helpers see a terminal event."""
        sequence = tally.sequence if tally is not None else 0
        error = {
            "type": "error",
            "code": exc.error_code or exc.error_type,
            "message": exc.public_message,
            "param": exc.param,
        }
        out = sse_event("error", {**error, "sequence_number": sequence})
        snapshot = dict(tally.snapshot) if tally is not None and tally.snapshot is not None else None
        if snapshot is not None:
            snapshot["status"] = "failed"
            snapshot["error"] = {"code": "server_error", "message": exc.public_message}
            out += sse_event(
                "response.failed", {"type": "response.failed", "sequence_number": sequence + 1} | {"response": snapshot}
            )
        return out


@dataclass(frozen=True)
class AnthropicDialect(Dialect):
    name: str = "anthropic"
    typed_stream: bool = True
    prompt_key: str = "input_tokens"
    completion_key: str = "output_tokens"

    def new_tally(self) -> TypedTally:
        return MessagesTally()

    def envelope(self, exc: GatewayError) -> dict[str, Any]:
        kind = ANTHROPIC_ERROR_TYPES.get(exc.status_code, "api_error")
        return {"type": "error", "error": {"type": kind, "message": exc.public_message}}

    def error_event(self, exc: GatewayError, tally: TypedTally | None = None) -> bytes:
        return sse_event("error", self.envelope(exc)) + sse_event("message_stop", {"type": "message_stop"})

    def rate_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """`x-ratelimit-*` (OpenAI's) become `anthropic-ratelimit-*` with RFC 3339 reset times."""
        out = {k: v for k, v in headers.items() if not k.startswith("x-ratelimit-")}
        now = time.time()
        for bucket in ("requests", "tokens"):
            limit = headers.get(f"x-ratelimit-limit-{bucket}")
            if limit is None:
                continue
            out[f"anthropic-ratelimit-{bucket}-limit"] = limit
            out[f"anthropic-ratelimit-{bucket}-remaining"] = headers.get(f"x-ratelimit-remaining-{bucket}", limit)
            wait = parse_go_duration(headers.get(f"x-ratelimit-reset-{bucket}", "0s"))
            reset = datetime.fromtimestamp(now + (wait or 0.0), tz=UTC).replace(microsecond=0)
            out[f"anthropic-ratelimit-{bucket}-reset"] = reset.isoformat().replace("+00:00", "Z")
        return out


OPENAI = Dialect("openai")
EMBEDDINGS = Dialect("embeddings")
RESPONSES = ResponsesDialect()
ANTHROPIC = AnthropicDialect()


def dialect_for_path(path: str) -> Dialect:
    """The dialect of a request path (used where only the path is known, e.g. an error before routing)."""
    if path.startswith("/v1/messages"):
        return ANTHROPIC
    if path.startswith("/v1/responses"):
        return RESPONSES
    return OPENAI
