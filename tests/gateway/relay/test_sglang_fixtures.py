"""SGLang 0.5.23's own output (tests/fixtures/sglang, built by its serving code) replayed into the relay's parsers:
what reaches the client is OpenAI's shape, and what the relay accounts is what the worker reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from sparsegate.gateway.errors import error_event
from sparsegate.gateway.record import RequestRecord
from sparsegate.gateway.relay.attempts import router_outcome
from sparsegate.gateway.relay.mend import Mender, mend_body, sample_rids, worker_choices, worker_stream_error
from sparsegate.gateway.relay.whole import account_whole
from sparsegate.gateway.sse import EventSplitter, StreamTally, event_data

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sglang"
RID = "gw-1"  # the rid the fixtures were built with
STREAMS = sorted(p.name for p in FIXTURES.glob("*.sse"))
BODIES = sorted(p.name for p in FIXTURES.glob("*_*.json") if p.name.startswith(("chat_", "completion_")))


def _n(name: str) -> int:
    return 2 if "_n2" in name else 1


def _replay(name: str, *, wants_usage: bool = True, cut: int = 7) -> tuple[StreamTally, list[bytes]]:
    """The fixture through the splitter, the tally and the mender, fed in `cut`-byte reads."""
    raw = (FIXTURES / name).read_bytes()
    splitter, tally, mend = EventSplitter(), StreamTally(wants_usage=wants_usage), Mender(RID, _n(name) > 1).event
    out: list[bytes] = []
    for start in range(0, len(raw), cut):
        for event in splitter.feed(raw[start : start + cut]):
            data = event_data(event)
            assert data is not None
            forwarded = tally.take(data)
            if forwarded is not None:
                out.append(mend(forwarded))
    assert splitter.rest() == b""
    return tally, out


def test_the_fixtures_are_there() -> None:
    assert {"chat_n2.sse", "chat_abort.sse", "chat_error_abort.sse", "completion_n2.sse"} <= set(STREAMS)
    assert {"chat_n2.json", "chat_abort.json", "completion_n2.json"} <= set(BODIES)


@pytest.mark.parametrize("name", STREAMS)
def test_every_forwarded_event_is_openai_shaped(name: str) -> None:
    tally, out = _replay(name)
    assert tally.done
    chunks = [json.loads(data) for data in out]
    assert chunks, "something is relayed"
    for chunk in chunks:
        assert chunk["id"] == RID, "one id per answer, whatever the choice"
        for choice in chunk["choices"]:
            assert choice["finish_reason"] in (None, "stop", "length", "tool_calls", "content_filter")
            delta = choice.get("delta", {})
            assert "role" not in delta or delta["role"] == "assistant"
        usage = chunk.get("usage")
        if usage is not None:
            for key in ("prompt_tokens_details", "completion_tokens_details"):
                assert usage.get(key, {}) is not None


@pytest.mark.parametrize("name", [s for s in STREAMS if "abort" not in s])
def test_complete_streams_account_the_workers_usage(name: str) -> None:
    tally, out = _replay(name)
    assert not tally.failed and len(tally.finish_reasons) == _n(name)
    if b'"usage":{' not in (FIXTURES / name).read_bytes():  # built without stream_options.include_usage
        assert tally.usage is None and tally.content_events > 0
        return
    assert tally.usage is not None
    # the usage chunk was forwarded because the client asked for it
    assert json.loads(out[-1])["usage"]["completion_tokens"] == tally.usage["completion_tokens"]
    quiet, quiet_out = _replay(name, wants_usage=False)
    assert quiet.usage == tally.usage and all(json.loads(d).get("usage") is None for d in quiet_out)


@pytest.mark.parametrize("name", ["chat_abort.sse", "completion_abort.sse"])
def test_a_worker_abort_is_held_back_and_charged_what_the_worker_reported(name: str) -> None:
    tally, out = _replay(name)
    assert tally.aborted and tally.failed
    assert tally.usage is not None and tally.usage["completion_tokens"] == 2
    assert all(json.loads(d)["choices"] for d in out), "neither the abort chunk nor the usage after it is relayed"


@pytest.mark.parametrize("name", ["chat_error_abort.sse", "completion_error_abort.sse"])
def test_a_worker_error_event_becomes_openais_envelope(name: str) -> None:
    tally, out = _replay(name)
    assert tally.upstream_error is not None and tally.upstream_error["code"] == 503
    assert tally.usage is not None and tally.usage["completion_tokens"] == 2
    assert not any(b'"error"' in d for d in out), "the worker's own event is not passed on raw"
    error = json.loads(error_event(worker_stream_error(tally.upstream_error))[6:])["error"]
    assert error == {"message": "Aborted", "type": "server_error", "param": None, "code": None}


def test_worker_error_types_follow_its_status() -> None:
    bad = worker_stream_error({"object": "error", "message": "bad stop", "type": "BadRequest", "code": 400})
    assert bad.error_type == "invalid_request_error" and router_outcome(bad) == "client_error"
    down = worker_stream_error({"message": "see http://10.0.0.11:30000 now", "type": "ServiceUnavailable"})
    assert down.error_type == "server_error" and down.blames_worker
    assert "10.0.0.11" not in error_event(down).decode()


def _compact(name: str) -> bytes:
    return orjson.dumps(json.loads((FIXTURES / name).read_text()))  # as it comes over the wire


@pytest.mark.parametrize("name", BODIES)
def test_whole_bodies_are_mended_and_accounted(name: str) -> None:
    record = RequestRecord(request_id="r", endpoint="chat")
    obj: Any = account_whole(record, _compact(name))
    assert obj is not None and record.usage_from_worker and record.completion_tokens > 0
    mend_body(obj, RID, _n(name) > 1)
    assert obj["id"] == RID
    assert all(v is not None for v in obj["usage"].values())
    if "abort" in name:
        assert record.finish_reasons == ["abort"]
    else:
        assert "abort" not in record.finish_reasons and len(record.finish_reasons) == _n(name)


def test_every_sample_rid_is_aborted() -> None:
    assert sample_rids(RID, 1, False) == [RID]
    assert sample_rids(RID, 3, True) == ["gw-1_0", "gw-1_1", "gw-1_2"]
    assert sample_rids(RID, 1, True) == ["gw-1_0"]


def test_which_requests_sglang_expands() -> None:
    # io_struct: a list of prompts is a batch (even of one), and n > 1 makes a batch of a single prompt
    assert worker_choices(1) == (1, False) and worker_choices(3) == (3, True)
    assert worker_choices(1, "text") == (1, False) and worker_choices(1, [1, 2, 3]) == (1, False)
    assert worker_choices(1, ["a"]) == (1, True) and worker_choices(2, ["a", "b"]) == (4, True)
    assert worker_choices(2, [[1, 2], [3]]) == (4, True)


def test_mender_leaves_strings_and_other_ids_alone() -> None:
    mend = Mender("chatcmpl-7", True).event
    text = (
        b'{"id":"chatcmpl-7_1","choices":[{"index":1,"delta":{"role":null,"content":"say \\"role\\":null",'
        b'"tool_calls":[{"id":"call_1","index":0}]}}]}'
    )
    mended = json.loads(mend(text))
    assert mended["id"] == "chatcmpl-7"
    assert mended["choices"][0]["delta"] == {"content": 'say "role":null', "tool_calls": [{"id": "call_1", "index": 0}]}
    assert Mender("chatcmpl-7", False).event(b'{"id":"chatcmpl-7_1"}') == b'{"id":"chatcmpl-7_1"}'
