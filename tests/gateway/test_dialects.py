"""Each API's wire shape: error envelopes, stream error events, usage, typed-stream tallies, rate-limit headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from sparsegate.gateway.dialects import (
    ANTHROPIC,
    OPENAI,
    RESPONSES,
    MessagesTally,
    ResponsesTally,
    dialect_for_path,
    parse_go_duration,
)
from sparsegate.gateway.errors import AuthenticationFailed, RateLimited, UpstreamUnavailable
from tests.backends.test_sim_agents import sse_events


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0s", 0.0)]
)
def test_go_durations_read_back(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_paths_pick_their_dialect() -> None:
    assert dialect_for_path("/v1/messages/count_tokens") is ANTHROPIC
    assert dialect_for_path("/v1/responses/resp_1/cancel") is RESPONSES
    assert dialect_for_path("/v1/chat/completions") is OPENAI


def test_anthropic_envelope_and_stream_error() -> None:
    exc = AuthenticationFailed("Incorrect API key provided: sk-...abcd.")
    assert ANTHROPIC.envelope(exc) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided: sk-...abcd."},
    }
    events = sse_events(ANTHROPIC.error_event(UpstreamUnavailable("worker failed")).decode())
    assert [name for name, _ in events] == ["error", "message_stop"]
    assert events[0][1] == {"type": "error", "error": {"type": "api_error", "message": "worker failed"}}
    assert OPENAI.done_event == b"data: [DONE]\n\n" and ANTHROPIC.done_event == RESPONSES.done_event == b""


def test_anthropic_rate_headers_come_from_the_same_buckets() -> None:
    limited = RateLimited(
        "Rate limit reached",
        kind="tokens",
        retry_after_s=2.5,
        rate_headers={
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        },
    )
    before = datetime.now(UTC).timestamp()
    headers = ANTHROPIC.rate_headers(limited.headers())
    assert headers["retry-after"] == "3" and not any(k.startswith("x-ratelimit") for k in headers)
    assert headers["anthropic-ratelimit-tokens-limit"] == "1000"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-remaining"] == "59"
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-tokens-reset"].replace("Z", "+00:00")).timestamp()
    assert before + 359 <= reset <= before + 362
    assert OPENAI.rate_headers({"x-ratelimit-limit-tokens": "1"}) == {"x-ratelimit-limit-tokens": "1"}


def test_responses_tally_reads_usage_from_the_terminal_event() -> None:
    tally = ResponsesTally()
    created = {"id": "resp_1", "object": "response", "status": "in_progress", "output": [], "model": "m"}
    tally.take_event("response.created", json.dumps({"type": "response.created", "response": created}).encode())
    tally.take_event("response.output_text.delta", b'{"delta":"hi"}')
    assert not tally.done and tally.content_events == 1 and tally.response_id == "resp_1"
    usage = {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    final = {"type": "response.completed", "response": {**created, "status": "completed", "usage": usage}}
    tally.take_event("response.completed", json.dumps(final).encode())
    assert tally.done and (tally.prompt_tokens, tally.completion_tokens) == (12, 3)


def test_responses_stream_error_is_the_spec_error_event_then_response_failed() -> None:
    tally = ResponsesTally()
    created = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "output": []}
    created |= {"model": "m", "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    tally.take_event("response.created", json.dumps({"type": "response.created", "response": created}).encode())
    tally.take_event("response.in_progress", b"{}")
    events = sse_events(RESPONSES.error_event(UpstreamUnavailable("worker failed"), tally).decode())
    assert [name for name, _ in events] == ["error", "response.failed"]
    adapter: TypeAdapter[object] = TypeAdapter(ResponseStreamEvent)
    for _, data in events:
        adapter.validate_python(data)
    assert [data["sequence_number"] for _, data in events] == [2, 3]
    assert events[1][1]["response"]["status"] == "failed" and events[1][1]["response"]["id"] == "resp_1"


def test_messages_tally_reads_input_then_output_tokens() -> None:
    tally = MessagesTally()
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 0}}}
    tally.take_event("message_start", json.dumps(start).encode())
    tally.take_event("content_block_delta", b"{}")
    tally.take_event("message_delta", b'{"type":"message_delta","delta":{},"usage":{"output_tokens":4}}')
    assert not tally.done
    tally.take_event("message_stop", b'{"type":"message_stop"}')
    assert tally.done and (tally.prompt_tokens, tally.completion_tokens) == (9, 4) and tally.response_id == "msg_1"
    failed = MessagesTally()
    failed.take_event("error", b'{"type":"error","error":{"type":"api_error","message":"x"}}')
    assert failed.upstream_error == {"type": "api_error", "message": "x"}


def test_whole_usage_per_shape() -> None:
    assert RESPONSES.whole_usage(b'{"id":"resp_1","usage":{"input_tokens":5,"output_tokens":2}}').prompt_tokens == 5
    assert ANTHROPIC.whole_usage(b'{"id":"m","usage":{"input_tokens":5,"output_tokens":2}}').completion_tokens == 2
    assert OPENAI.whole_usage(b'{"usage":{"prompt_tokens":7}}').completion_tokens == 0
    assert OPENAI.whole_usage(b"not json").prompt_tokens is None
