"""SSE framing and the stream tally: events split at any byte boundary, usage kept or dropped as asked."""

from __future__ import annotations

import json

from sparsegate.gateway.sse import EventSplitter, StreamTally, event_data


def _chunk(content: str | None, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if content is None and finish is None else [
        {"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}
    ]  # fmt: skip
    return json.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, "usage": usage}
    ).encode()


def test_splitter_handles_any_boundary_and_crlf() -> None:
    stream = b"data: a\n\ndata: b\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n"
    for cut in range(1, len(stream)):
        splitter = EventSplitter()
        events = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        assert events == [b"data: a", b"data: b", b": keep-alive", b"data: [DONE]"], cut
        assert splitter.rest() == b""


def test_event_data_joins_multiline_and_skips_comments() -> None:
    assert event_data(b"data: x\ndata: y") == b"x\ny"
    assert event_data(b": comment") is None
    assert event_data(b"event: ping\ndata:{}") == b"{}"


def test_tally_counts_content_and_finish_without_parsing_plain_chunks() -> None:
    tally = StreamTally(wants_usage=True)
    for word in ("a", "b", "c"):
        assert tally.take(_chunk(word)) == _chunk(word)
    tally.take(_chunk(None, finish="length"))
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert tally.take(_chunk(None, usage=usage)) is not None
    assert tally.take(b"[DONE]") is None
    assert tally.done and tally.content_events == 3
    assert tally.finish_reasons == {0: "length"} and tally.usage == usage
    assert tally.response_id == "chatcmpl-1"


def test_tally_drops_usage_chunk_when_not_asked() -> None:
    tally = StreamTally(wants_usage=False)
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert tally.take(_chunk(None, usage=usage)) is None
    assert tally.usage == usage
    # usage riding on a content chunk is blanked, not dropped
    rewritten = tally.take(_chunk("x", usage=usage))
    assert rewritten is not None and json.loads(rewritten)["usage"] is None


def test_tally_notes_upstream_error_event() -> None:
    tally = StreamTally(wants_usage=False)
    event = json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode()
    assert tally.take(event) is None, "held back: the relay sends its own error event at the end"
    assert tally.upstream_error == {"message": "boom", "type": "server_error"}
    assert tally.take(_chunk("late")) is None and tally.content_events == 0


def test_plain_chunks_take_the_fast_path_and_count_like_the_slow_one() -> None:
    compact = [
        b'{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}',
        b'{"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}',
        b'{"id":"c","choices":[{"index":0,"delta":{"reasoning_content":"hm"},"finish_reason":null}],"usage":null}',
        b'{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]},"finish_reason":null}],"usage":null}',
        b'{"id":"c","choices":[{"index":0,"text":"x","finish_reason":null}],"usage":null}',
    ]
    fast = StreamTally(wants_usage=False)
    slow = StreamTally(wants_usage=False)
    for data in compact:
        assert fast.take(data) == data
        spaced = json.dumps(json.loads(data)).encode()  # ": " forces the general path
        assert slow.take(spaced) == spaced
    assert fast.content_events == slow.content_events == 4
    # two choices in one chunk, one of them finishing: not plain, so the finish is seen
    two = b'{"id":"c","choices":[{"index":0,"finish_reason":null},{"index":1,"finish_reason":"stop"}],"usage":null}'
    fast.take(two)
    assert fast.finish_reasons == {1: "stop"}
