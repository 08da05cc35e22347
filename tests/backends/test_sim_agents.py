"""The simulated worker's Responses, Anthropic Messages, embeddings and tokenizer endpoints, checked against
sglang 0.5.23's own pydantic models (and the openai SDK's stream event types), in process."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from sparsegate.backends.sim import SimConfig, SimState, create_app
from tests.backends.sglang_support import import_sglang

FAST: dict[str, Any] = {
    "model": "sim-a",
    "max_context": 4096,
    "ttft_base_ms": 1.0,
    "ttft_per_1k_prompt_tokens_ms": 0.0,
    "itl_ms": 1.0,
    "itl_per_running_ms": 0.0,
}
TOOL = {"type": "function", "name": "lookup", "description": "look up", "parameters": {"type": "object"}}
ANTHROPIC_TOOL = {"name": "lookup", "description": "look up", "input_schema": {"type": "object"}}


@pytest.fixture(scope="module")
def openai_protocol() -> Any:
    return import_sglang("sglang.srt.entrypoints.openai.protocol")[0]


@pytest.fixture(scope="module")
def anthropic_protocol() -> Any:
    return import_sglang("sglang.srt.entrypoints.anthropic.protocol")[0]


@pytest.fixture
async def sim() -> AsyncIterator[httpx.AsyncClient]:
    state = SimState.build(SimConfig(**FAST))
    transport = httpx.ASGITransport(app=create_app(state.config, state=state))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client
    await state.aclose()


def sse_events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) for every event of a stream."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        assert data is not None and data != "[DONE]", block
        out.append((name, json.loads(data)))
    return out


# -- Responses ------------------------------------------------------------------------------------------------


async def test_response_whole_is_sglang_shaped_and_counts_like_chat(
    sim: httpx.AsyncClient, openai_protocol: Any
) -> None:
    request = {"model": "sim-a", "input": "Hello there", "instructions": "Be brief.", "max_output_tokens": 5}
    openai_protocol.ResponsesRequest.model_validate(request)
    response = await sim.post("/v1/responses", json=request)
    assert response.status_code == 200
    body = response.json()
    openai_protocol.ResponsesResponse.model_validate(body)
    assert body["id"].startswith("resp_") and body["status"] == "incomplete"
    assert body["output"][0]["type"] == "message" and body["output"][0]["content"][0]["text"]
    chat = await sim.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]},
    )
    assert body["usage"]["input_tokens"] == chat.json()["usage"]["prompt_tokens"]
    assert body["usage"]["output_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + 5


async def test_response_stream_is_typed_events_without_done(sim: httpx.AsyncClient, openai_protocol: Any) -> None:
    response = await sim.post("/v1/responses", json={"input": "Hi", "stream": True, "max_output_tokens": 4})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for name, data in events:
        assert name == data["type"]
        adapter.validate_python(data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.incomplete"
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    final = events[-1][1]["response"]
    openai_protocol.ResponsesResponse.model_validate(final)
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == names.count("response.output_text.delta") == 4


async def test_response_tool_call_stream_arguments_concatenate(sim: httpx.AsyncClient) -> None:
    request = {"input": "find it", "tools": [TOOL], "tool_choice": "required", "stream": True, "max_output_tokens": 3}
    events = sse_events((await sim.post("/v1/responses", json=request)).text)
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for _, data in events:
        adapter.validate_python(data)
    deltas = "".join(d["delta"] for n, d in events if n == "response.function_call_arguments.delta")
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert deltas == done["arguments"] and json.loads(deltas)["input"]
    item = events[-1][1]["response"]["output"][0]
    assert item["type"] == "function_call" and item["name"] == "lookup" and item["arguments"] == deltas


async def test_previous_response_id_continues_the_stored_conversation(sim: httpx.AsyncClient) -> None:
    first = (await sim.post("/v1/responses", json={"input": "one"})).json()
    second = (await sim.post("/v1/responses", json={"input": "two", "previous_response_id": first["id"]})).json()
    alone = (await sim.post("/v1/responses", json={"input": "two"})).json()
    assert second["previous_response_id"] == first["id"]
    # The history (first input and its answer) is part of the prompt.
    assert second["usage"]["input_tokens"] > alone["usage"]["input_tokens"]
    got = await sim.get(f"/v1/responses/{second['id']}")
    assert got.status_code == 200 and got.json() == second


async def test_response_errors_use_the_nested_envelope(sim: httpx.AsyncClient, openai_protocol: Any) -> None:
    missing = await sim.post("/v1/responses", json={"input": "x", "previous_response_id": "resp_nope"})
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "Response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    assert (await sim.get("/v1/responses/msg_1")).status_code == 400
    assert (await sim.post("/v1/responses", json={"input": "x", "model": "other"})).status_code == 404
    unstored = (await sim.post("/v1/responses", json={"input": "x", "store": False})).json()
    assert (await sim.get(f"/v1/responses/{unstored['id']}")).status_code == 404
    assert (await sim.post("/v1/responses", json={"input": "x", "background": True, "store": False})).status_code == 400


async def test_cancel_stops_a_background_response(sim: httpx.AsyncClient) -> None:
    started = await sim.post("/v1/responses", json={"input": "long", "background": True, "max_output_tokens": 3000})
    assert started.json()["status"] == "queued"
    rid = started.json()["id"]
    cancelled = await sim.post(f"/v1/responses/{rid}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await sim.get(f"/v1/responses/{rid}")).json()["status"] == "cancelled"
    stats = (await sim.get("/sim/stats")).json()
    assert rid not in stats["rids_active"]


# -- Anthropic Messages ---------------------------------------------------------------------------------------


async def test_message_whole_and_count_tokens(sim: httpx.AsyncClient, anthropic_protocol: Any) -> None:
    request = {
        "model": "sim-a",
        "system": "Be brief.",
        "max_tokens": 6,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    anthropic_protocol.AnthropicMessagesRequest.model_validate(request)
    body = (await sim.post("/v1/messages", json=request)).json()
    anthropic_protocol.AnthropicMessagesResponse.model_validate(body)
    assert body["stop_reason"] == "max_tokens" and body["usage"]["output_tokens"] == 6
    counted = await sim.post("/v1/messages/count_tokens", json={k: v for k, v in request.items() if k != "max_tokens"})
    anthropic_protocol.AnthropicCountTokensResponse.model_validate(counted.json())
    assert counted.json()["input_tokens"] == body["usage"]["input_tokens"]


async def test_message_stream_uses_anthropic_event_names(sim: httpx.AsyncClient, anthropic_protocol: Any) -> None:
    request = {"model": "sim-a", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    events = sse_events((await sim.post("/v1/messages", json=request)).text)
    adapter: TypeAdapter[Any] = TypeAdapter(anthropic_protocol.AnthropicStreamEvent)
    for name, data in events:
        assert name == data["type"]
        adapter.validate_python(data)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0
    assert events[-2][1]["usage"]["output_tokens"] == names.count("content_block_delta") == 4


async def test_message_tool_use_stream_json_concatenates(sim: httpx.AsyncClient) -> None:
    request = {
        "model": "sim-a",
        "max_tokens": 3,
        "stream": True,
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "find"}],
    }
    events = sse_events((await sim.post("/v1/messages", json=request)).text)
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial)["input"]
    assert events[1][1]["content_block"]["type"] == "tool_use"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_message_errors_use_anthropic_envelope(sim: httpx.AsyncClient, anthropic_protocol: Any) -> None:
    response = await sim.post("/v1/messages", json={"model": "sim-a", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    anthropic_protocol.AnthropicErrorResponse.model_validate(response.json())
    assert response.json()["error"]["type"] == "invalid_request_error"
    await sim.post("/sim/faults", json={"unhealthy": True})
    down = await sim.post(
        "/v1/messages", json={"model": "sim-a", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    )
    assert down.status_code == 503 and down.json()["error"]["type"] == "overloaded_error"


# -- embeddings and the tokenizer -----------------------------------------------------------------------------


async def test_embeddings_float_and_base64_agree(sim: httpx.AsyncClient, openai_protocol: Any) -> None:
    floats = (await sim.post("/v1/embeddings", json={"input": ["a", "b"], "model": "sim-a"})).json()
    packed = (await sim.post("/v1/embeddings", json={"input": ["a", "b"], "encoding_format": "base64"})).json()
    openai_protocol.EmbeddingResponse.model_validate(floats)
    openai_protocol.EmbeddingResponse.model_validate(packed)
    decoded = struct.unpack("<16f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    assert floats["data"][0]["embedding"] != floats["data"][1]["embedding"]
    assert floats["usage"]["prompt_tokens"] == 4  # one byte each: 1 token + BOS, twice


async def test_tokenize_counts_what_chat_reports_and_detokenize_inverts(
    sim: httpx.AsyncClient, openai_protocol: Any
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße, world! " * 40}]
    counted = (await sim.post("/v1/tokenize", json={"messages": messages})).json()
    openai_protocol.TokenizeResponse.model_validate(counted)
    chat = (await sim.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})).json()
    assert counted["count"] == len(counted["tokens"]) == chat["usage"]["prompt_tokens"]
    assert counted["max_model_len"] == 4096
    text = "naïve café ☕ " * 3
    ids = (await sim.post("/tokenize", json={"prompt": text})).json()["tokens"]
    back = (await sim.post("/v1/detokenize", json={"tokens": ids})).json()
    openai_protocol.DetokenizeResponse.model_validate(back)
    assert back["text"] == text
    both = (await sim.post("/v1/tokenize", json={"prompt": ["a", "bb"], "add_special_tokens": False})).json()
    assert both["count"] == [1, 1]
    bad = await sim.post("/v1/tokenize", json={"prompt": "a", "messages": messages})
    assert bad.status_code == 400
