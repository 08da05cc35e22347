"""The error tree maps to OpenAI's envelope in one place, with the right status, type, code and retry hints."""

from __future__ import annotations

import json

from sparsegate.gateway.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    NoHealthyWorker,
    RateLimited,
    UpstreamTimeout,
    error_event,
    error_response,
)


def test_envelope_shape() -> None:
    resp = error_response(AuthenticationFailed("Incorrect API key provided: sk-...abcd."))
    assert resp.status_code == 401
    body = json.loads(bytes(resp.body))
    assert body == {
        "error": {
            "message": "Incorrect API key provided: sk-...abcd.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_context_length_message_names_both_numbers() -> None:
    exc = ContextLengthExceeded(max_context=32768, prompt_tokens=30000, completion_tokens=4000)
    assert exc.status_code == 400 and exc.error_code == "context_length_exceeded" and exc.param == "messages"
    assert "32768" in exc.message and "34000" in exc.message


def test_rate_limited_headers() -> None:
    exc = RateLimited("slow down", kind="tokens", retry_after_s=1.2, rate_headers={"x-ratelimit-limit-tokens": "10"})
    headers = exc.headers()
    assert headers["retry-after-ms"] == "1200" and headers["retry-after"] == "2"
    assert headers["x-ratelimit-limit-tokens"] == "10"
    assert exc.envelope()["error"]["type"] == "tokens"
    never = RateLimited("too big", kind="tokens", retry_after_s=None, can_ever_fit=False)
    assert never.headers()["x-should-retry"] == "false" and "retry-after" not in never.headers()


def test_upstream_statuses_and_stream_event() -> None:
    assert UpstreamTimeout("slow").status_code == 504
    assert NoHealthyWorker("none", retry_after_s=3).headers() == {"retry-after": "3"}
    event = error_event(UpstreamTimeout("slow"))
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["type"] == "server_error"
