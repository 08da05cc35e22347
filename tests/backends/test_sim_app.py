"""The simulated worker's HTTP surface, driven in process through `httpx.ASGITransport`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from sparsegate.backends.sim import FaultSettings

from .sim_support import (
    CHAT,
    COMPLETIONS,
    MakeSim,
    Sim,
    chat_body,
    metric_value,
    sse_events,
    wait_tokens,
    wait_until,
)

# --- generation, non-streamed -----------------------------------------------------------------------------------


async def test_chat_non_stream_shape_rid_and_usage(sim: Sim) -> None:
    response = await sim.client.post(CHAT, json=chat_body(rid="gw-123"))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "gw-123"
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim-a"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    completion_tokens = len(choice["message"]["content"].split(" "))
    prompt_tokens = 4 + 4 + 3  # ceil(14 / 4) + 4 per message + 3
    assert body["usage"] == {  # SGLang's UsageInfo, nulls included (no --enable-cache-report)
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": None,
        "reasoning_tokens": 0,
        "completion_tokens_details": None,
    }
    assert "tool_calls" not in choice["message"]  # ChatMessage drops it when None


async def test_text_is_deterministic_across_workers_and_seeds(make_sim: MakeSim) -> None:
    first, second = await make_sim(seed=1), await make_sim(seed=2, model="sim-b")
    a = (await first.client.post(CHAT, json=chat_body("same prompt"))).json()
    b = (await second.client.post(CHAT, json=chat_body("same prompt"))).json()
    c = (await first.client.post(CHAT, json=chat_body("another prompt"))).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["choices"][0]["message"]["content"] != c["choices"][0]["message"]["content"]


async def test_max_tokens_and_max_completion_tokens(sim: Sim) -> None:
    capped = (await sim.client.post(CHAT, json=chat_body(max_tokens=3))).json()
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 3
    preferred = (await sim.client.post(CHAT, json=chat_body(max_tokens=3, max_completion_tokens=2))).json()
    assert preferred["usage"]["completion_tokens"] == 2


async def test_stop_truncates_before_the_stop_string(sim: Sim) -> None:
    full = (await sim.client.post(CHAT, json=chat_body("stop test"))).json()["choices"][0]["message"]["content"]
    stop = full.split(" ")[2]
    body = (await sim.client.post(CHAT, json=chat_body("stop test", stop=[stop, "zzz"]))).json()
    [choice] = body["choices"]
    assert choice["message"]["content"] == full[: full.find(stop)]
    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] == stop
    single = (await sim.client.post(CHAT, json=chat_body("stop test", stop=stop))).json()
    assert single["choices"][0]["message"]["content"] == choice["message"]["content"]


async def test_n_choices(sim: Sim) -> None:
    body = (await sim.client.post(CHAT, json=chat_body(n=3, max_tokens=5))).json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert len({choice["message"]["content"] for choice in body["choices"]}) == 3
    assert body["usage"]["completion_tokens"] == 15


async def test_completions_non_stream(sim: Sim) -> None:
    response = await sim.client.post(COMPLETIONS, json={"model": "sim-a", "prompt": "Once upon", "max_tokens": 4})
    body = response.json()
    assert body["object"] == "text_completion"
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0  # no rid: GenerateReqInput's uuid4().hex
    [choice] = body["choices"]
    assert len(choice["text"].split(" ")) == 4
    assert choice["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 3 + 1  # ceil(9 / 4) + BOS
    ids = (await sim.client.post(COMPLETIONS, json={"prompt": [1, 2, 3], "max_tokens": 1})).json()
    assert ids["usage"]["prompt_tokens"] == 3


async def test_unknown_fields_are_ignored_and_priority_recorded(sim: Sim) -> None:
    extra: dict[str, Any] = {
        "priority": 7,
        "chat_template_kwargs": {"thinking": True},
        "separate_reasoning": False,
        "rid": "p-1",
    }
    response = await sim.client.post(CHAT, json=chat_body(**extra))
    assert response.status_code == 200
    assert (await sim.record("p-1"))["priority"] == 7


async def test_content_parts_count_like_text(sim: Sim) -> None:
    parts = [
        {"type": "text", "text": "Say "},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "something."},
    ]
    as_parts = (await sim.client.post(CHAT, json={"messages": [{"role": "user", "content": parts}]})).json()
    as_text = (await sim.client.post(CHAT, json=chat_body())).json()
    assert as_parts["usage"]["prompt_tokens"] == as_text["usage"]["prompt_tokens"]


# --- generation, streamed ---------------------------------------------------------------------------------------


async def test_chat_stream_chunks(sim: Sim) -> None:
    response = await sim.client.post(CHAT, json=chat_body(stream=True, max_tokens=4, rid="s-1"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["id"] for chunk in chunks} == {"s-1"}
    assert len({chunk["created"] for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == "sim-a" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    # msgspec's StreamDelta: reasoning_content always there, role and content only when set.
    assert deltas[0] == {"reasoning_content": None, "role": "assistant", "content": ""}
    assert [len(delta["content"].split()) for delta in deltas[1:-1]] == [1, 1, 1, 1]
    assert deltas[-1] == {"reasoning_content": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    assert all(chunk["choices"][0]["logprobs"] is None for chunk in chunks)


async def test_stream_text_equals_non_stream_text(sim: Sim) -> None:
    whole = (await sim.client.post(CHAT, json=chat_body("compare"))).json()["choices"][0]["message"]["content"]
    events = sse_events((await sim.client.post(CHAT, json=chat_body("compare", stream=True))).text)
    streamed = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1])
    assert streamed == whole


async def test_include_usage(sim: Sim) -> None:
    body = chat_body(stream=True, max_tokens=3, stream_options={"include_usage": True})
    events = sse_events((await sim.client.post(CHAT, json=body)).text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
        "prompt_tokens_details": None,
        "reasoning_tokens": 0,
        "completion_tokens_details": None,
    }
    assert all("usage" not in event for event in events[:-2])  # SGLang's text chunks have no usage key


async def test_completions_stream_with_usage(sim: Sim) -> None:
    body = {"prompt": "Once upon", "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events((await sim.client.post(COMPLETIONS, json=body)).text)
    assert [event["object"] for event in events[:-1]] == ["text_completion"] * 3
    assert events[-1] == "[DONE]"
    # The last token and the finish reason travel in one chunk, as SGLang's output carries both.
    assert [event["choices"][0]["finish_reason"] for event in events[:2]] == [None, "length"]
    assert events[1]["choices"][0]["text"] != ""
    assert all(event["usage"] is None for event in events[:2])
    assert events[2]["usage"] == {"prompt_tokens": 4, "total_tokens": 6, "completion_tokens": 2, "reasoning_tokens": 0}


async def test_stream_with_n_opens_every_choice(sim: Sim) -> None:
    events = sse_events((await sim.client.post(CHAT, json=chat_body(stream=True, n=2, max_tokens=2))).text)
    by_index: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for event in events[:-1]:
        by_index[event["choices"][0]["index"]].append(event["choices"][0])
    for choices in by_index.values():
        assert choices[0]["delta"]["role"] == "assistant"
        assert choices[-1]["finish_reason"] == "length"
        assert len(choices) == 4


# --- refusals ---------------------------------------------------------------------------------------------------


async def test_prompt_longer_than_context_is_refused_like_sglang(make_sim: MakeSim) -> None:
    sim = await make_sim(max_context=100)
    response = await sim.client.post(CHAT, json=chat_body("x" * 400, rid="long-1"))
    assert response.status_code == 400
    assert response.json() == {
        "object": "error",
        "message": "The input (107 tokens) is longer than the model's context length (100 tokens).",
        "type": "BadRequest",
        "param": None,
        "code": 400,
    }
    total = await sim.client.post(CHAT, json=chat_body("x" * 200, max_tokens=50, stream=True))
    assert total.status_code == 400
    message = total.json()["message"]
    assert message.startswith("Requested token count exceeds the model's maximum context length of 100 tokens.")
    assert "You requested a total of 107 tokens: 57 tokens from the input messages and 50 tokens" in message
    stats = await sim.stats()
    assert stats["rejected"] == 2
    assert stats["completed"] == 0
    assert (await sim.record("long-1"))["status"] == "rejected"


async def test_prompt_plus_max_tokens_equal_to_context_is_allowed(make_sim: MakeSim) -> None:
    sim = await make_sim(max_context=100)
    response = await sim.client.post(CHAT, json=chat_body("x" * 200, max_tokens=43))  # 57 + 43 == 100
    assert response.status_code == 200
    assert (await sim.client.post(CHAT, json=chat_body("x" * 200, max_tokens=44))).status_code == 400


# SGLang's `type` depends on where it refuses: pydantic validation ("Bad Request"), its `_validate_request`
# ("BadRequestError"), or a ValueError in serving ("BadRequest").
@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"messages": []}, "BadRequestError"),
        ({"messages": "hi"}, "Bad Request"),
        ({"messages": [{"content": "no role"}]}, "Bad Request"),
        ({"messages": [{"role": "user", "content": 5}]}, "Bad Request"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "BadRequest"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "3"}, "Bad Request"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "BadRequest"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "Bad Request"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "Bad Request"),
        ({"messages": [{"role": "user", "content": "x"}], "rid": 5}, "Bad Request"),
    ],
    ids=["empty", "not-list", "no-role", "bad-content", "neg-max", "str-max", "n0", "bad-stop", "bad-stream", "rid"],
)
async def test_bad_bodies_are_400(sim: Sim, body: dict[str, Any], error_type: str) -> None:
    response = await sim.client.post(CHAT, json=body)
    assert response.status_code == 400
    assert response.json()["type"] == error_type
    assert response.json()["code"] == 400


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_malformed_json_is_400(sim: Sim, raw: bytes) -> None:
    for path in (CHAT, COMPLETIONS, "/abort_request", "/sim/faults"):
        response = await sim.client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, path
        assert response.json()["object"] == "error"


async def test_unknown_path_is_sglang_shaped_404(sim: Sim) -> None:
    response = await sim.client.get("/nope")
    assert response.status_code == 404
    assert response.json()["code"] == 404


async def test_duplicate_active_rid_is_refused(sim: Sim) -> None:
    body = chat_body(rid="dup", max_tokens=50, ignore_eos=True)
    first = asyncio.create_task(sim.client.post(CHAT, json=body))
    await wait_until(lambda: _is_active(sim, "dup"))
    second = await sim.client.post(CHAT, json=body)
    assert second.status_code == 400
    assert "Duplicate request ID" in second.json()["message"]
    assert (await first).status_code == 200


async def _is_active(sim: Sim, rid: str) -> bool:
    return rid in (await sim.stats())["rids_active"]


# --- aborts -----------------------------------------------------------------------------------------------------


async def test_abort_ends_a_stream_with_finish_reason_abort(make_sim: MakeSim) -> None:
    sim = await make_sim(itl_ms=5.0)
    body = chat_body(rid="ab-1", stream=True, max_tokens=400, ignore_eos=True, stream_options={"include_usage": True})
    streaming = asyncio.create_task(sim.client.post(CHAT, json=body))
    await wait_tokens(sim, "ab-1", 3)
    assert (await sim.client.post("/abort_request", json={"rid": "ab-1"})).status_code == 200
    events = sse_events((await streaming).text)
    assert events[-1] == "[DONE]"
    assert events[-3]["choices"][0]["finish_reason"] == "abort"
    assert 3 <= events[-2]["usage"]["completion_tokens"] < 400
    stats = await sim.stats()
    assert (stats["aborted"], stats["disconnected"], stats["active"]) == (1, 0, 0)
    record = await sim.record("ab-1")
    assert (record["status"], record["finish_reason"]) == ("aborted", "abort")


async def test_abort_non_stream_returns_partial_text(make_sim: MakeSim) -> None:
    sim = await make_sim(itl_ms=5.0)
    waiting = asyncio.create_task(sim.client.post(CHAT, json=chat_body(rid="ab-2", max_tokens=400, ignore_eos=True)))
    await wait_tokens(sim, "ab-2", 2)
    await sim.client.post("/abort_request", json={"rid": "ab-2"})
    body = (await waiting).json()
    assert body["choices"][0]["finish_reason"] == "abort"
    assert 2 <= body["usage"]["completion_tokens"] < 400


async def test_abort_unknown_rid_is_200(sim: Sim) -> None:
    response = await sim.client.post("/abort_request", json={"rid": "nobody"})
    assert (response.status_code, response.content) == (200, b"")
    assert (await sim.stats())["aborted"] == 0


async def test_queue_and_abort_all(make_sim: MakeSim) -> None:
    sim = await make_sim(max_running=1, itl_ms=5.0)
    tasks = [
        asyncio.create_task(sim.client.post(CHAT, json=chat_body(rid=f"q-{i}", max_tokens=400, ignore_eos=True)))
        for i in range(3)
    ]

    async def two_waiting_one_decoding() -> bool:
        [load] = (await sim.client.get("/v1/loads")).json()["loads"]
        decoding = any(entry["completion_tokens"] > 0 for entry in (await sim.stats())["recent"])
        return bool(load["num_waiting_reqs"] == 2 and load["num_running_reqs"] == 1 and decoding)

    await wait_until(two_waiting_one_decoding)
    metrics = (await sim.client.get("/metrics")).text
    assert metric_value(metrics, "sglang:num_queue_reqs", model_name="sim-a") == 2.0
    assert metric_value(metrics, "sglang:num_running_reqs", model_name="sim-a") == 1.0
    await sim.client.post("/abort_request", json={"abort_all": True})
    bodies = [(await task).json() for task in tasks]
    assert all(body["choices"][0]["finish_reason"] == "abort" for body in bodies)
    assert [body["usage"]["completion_tokens"] == 0 for body in bodies].count(True) == 2  # the queued ones
    stats = await sim.stats()
    assert (stats["aborted"], stats["active"], stats["queued"], stats["running"]) == (3, 0, 0, 0)


# --- faults -----------------------------------------------------------------------------------------------------


async def test_error_rate_one_fails_before_any_byte(make_sim: MakeSim) -> None:
    sim = await make_sim(faults=FaultSettings(error_rate=1.0, error_status=503))
    response = await sim.client.post(CHAT, json=chat_body(stream=True, rid="e-1"))
    assert response.status_code == 503
    assert response.json()["type"] == "503"  # an HTTPException in SGLang: type is str(status)
    record = await sim.record("e-1")
    assert record["status"] == "failed"
    assert (await sim.stats())["failed"] == 1


async def test_error_rate_is_seeded(make_sim: MakeSim) -> None:
    async def outcomes(seed: int) -> list[int]:
        sim = await make_sim(seed=seed, faults=FaultSettings(error_rate=0.5))
        return [(await sim.client.post(CHAT, json=chat_body(max_tokens=1))).status_code for _ in range(16)]

    first, again, other = await outcomes(7), await outcomes(7), await outcomes(8)
    assert first == again
    assert set(first) == {200, 500}
    assert first != other


async def test_faults_can_be_changed_at_run_time(sim: Sim) -> None:
    assert (await sim.client.get("/sim/faults")).json() == FaultSettings().model_dump()
    changed = await sim.client.post("/sim/faults", json={"unhealthy": True, "stall_ms": 5})
    assert changed.json()["unhealthy"] is True
    assert changed.json()["stall_ms"] == 5
    assert (await sim.client.get("/sim/faults")).json()["unhealthy"] is True
    for bad in ({"error_rate": 2}, {"error_status": 200}, {"nonsense": 1}, {"drop_after_tokens": -1}):
        response = await sim.client.post("/sim/faults", json=bad)
        assert response.status_code == 400, bad
    assert (await sim.client.get("/sim/faults")).json()["stall_ms"] == 5  # bad input left the settings alone
    cleared = await sim.client.post("/sim/faults", json={"unhealthy": False, "drop_after_tokens": None})
    assert cleared.json()["unhealthy"] is False


async def test_unhealthy(make_sim: MakeSim) -> None:
    sim = await make_sim(faults=FaultSettings(unhealthy=True))
    assert (await sim.client.get("/health")).status_code == 503
    assert (await sim.client.get("/health_generate")).status_code == 503
    response = await sim.client.post(CHAT, json=chat_body())
    assert response.status_code == 503
    await sim.client.post("/sim/faults", json={"unhealthy": False})
    assert (await sim.client.get("/health")).status_code == 200
    assert (await sim.client.get("/health_generate")).status_code == 200


async def test_stall_delays_the_first_token_and_health_generate(make_sim: MakeSim) -> None:
    sim = await make_sim(health_timeout_s=0.1, faults=FaultSettings(stall_ms=300))
    started = time.monotonic()
    assert (await sim.client.post(CHAT, json=chat_body(max_tokens=1))).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert (await sim.client.get("/health_generate")).status_code == 503


async def test_drop_fault_truncates_the_stream(make_sim: MakeSim) -> None:
    # In process the cut shows as a body without its end; test_sim_wire proves the socket is cut.
    sim = await make_sim(faults=FaultSettings(drop_after_tokens=2))
    with pytest.raises(AssertionError):  # ASGITransport insists on a completed response
        await sim.client.post(CHAT, json=chat_body(stream=True, rid="d-1"))
    record = await sim.record("d-1")
    assert record["status"] == "failed"
    assert "drop_after_tokens" in record["error"]


# --- info, health, metrics, stats --------------------------------------------------------------------------------


async def test_models_and_info(make_sim: MakeSim) -> None:
    sim = await make_sim(model="glm-sim", model_path="/models/glm", max_context=2048)
    [card] = (await sim.client.get("/v1/models")).json()["data"]
    assert (card["id"], card["max_model_len"], card["object"]) == ("glm-sim", 2048, "model")
    info = (await sim.client.get("/get_model_info")).json()
    assert (info["model_path"], info["is_generation"]) == ("/models/glm", True)
    server = (await sim.client.get("/get_server_info")).json()
    assert (server["context_length"], server["model_path"], server["served_model_name"]) == (
        2048,
        "/models/glm",
        "glm-sim",
    )
    assert (await sim.client.get("/sim/config")).json()["max_context"] == 2048


async def test_health_generate_runs_one_token_without_counting_it(sim: Sim) -> None:
    assert (await sim.client.get("/health")).status_code == 200
    assert (await sim.client.get("/health_generate")).status_code == 200
    stats = await sim.stats()
    assert (stats["received"], stats["recent"]) == (0, [])


async def test_metrics_are_per_app_and_count_tokens(make_sim: MakeSim) -> None:
    first, second = await make_sim(), await make_sim(model="sim-b")
    await first.client.post(CHAT, json=chat_body(max_tokens=5))
    text = (await first.client.get("/metrics")).text
    for name in ("num_running_reqs", "num_queue_reqs", "token_usage", "gen_throughput"):
        assert f"sglang:{name}{{" in text
    assert metric_value(text, "sglang:prompt_tokens_total", model_name="sim-a", is_streaming="false") == 11.0
    assert metric_value(text, "sglang:generation_tokens_total", model_name="sim-a", is_streaming="false") == 5.0
    other = (await second.client.get("/metrics")).text
    assert metric_value(other, "sglang:generation_tokens_total", model_name="sim-b") is None
    assert "sim-a" not in other


async def test_token_usage_while_running(make_sim: MakeSim) -> None:
    sim = await make_sim(max_total_tokens=100, itl_ms=5.0)
    task = asyncio.create_task(sim.client.post(CHAT, json=chat_body(rid="u-1", max_tokens=400, ignore_eos=True)))
    await wait_tokens(sim, "u-1", 1)
    [load] = (await sim.client.get("/v1/loads")).json()["loads"]
    assert load["token_usage"] >= 0.12  # (11 prompt + >= 1 generated) / 100
    await sim.client.post("/abort_request", json={"rid": "u-1"})
    await task
    [load] = (await sim.client.get("/v1/loads")).json()["loads"]
    assert (load["token_usage"], load["num_total_tokens"]) == (0.0, 0)


async def test_stats_record_headers_and_reset(sim: Sim) -> None:
    headers = {"traceparent": "00-abc-def-01", "authorization": "Bearer secret", "x-sparsegate-tenant": "t1"}
    await sim.client.post(CHAT, json=chat_body(rid="h-1", max_tokens=2), headers=headers)
    record = await sim.record("h-1")
    assert record["headers_seen"] == {"traceparent": "00-abc-def-01", "x-sparsegate-tenant": "t1"}
    assert "authorization" in record["header_names"]
    assert "secret" not in json.dumps(await sim.stats())
    assert (record["endpoint"], record["stream"], record["max_tokens"], record["completion_tokens"]) == (
        CHAT,
        False,
        2,
        2,
    )
    stats = await sim.stats()
    assert (stats["received"], stats["completed"]) == (1, 1)
    reset = (await sim.client.post("/sim/reset")).json()
    assert (reset["received"], reset["completed"], reset["recent"]) == (0, 0, [])


async def test_recent_is_bounded(make_sim: MakeSim) -> None:
    sim = await make_sim(recent_limit=3)
    for i in range(5):
        await sim.client.post(CHAT, json=chat_body(rid=f"r-{i}", max_tokens=1))
    stats = await sim.stats()
    assert [entry["rid"] for entry in stats["recent"]] == ["r-2", "r-3", "r-4"]
    assert stats["received"] == 5


async def test_health_generate_is_200_when_busy_but_progressing(make_sim: MakeSim) -> None:
    sim = await make_sim(max_running=1, itl_ms=5.0, health_timeout_s=2.0)
    task = asyncio.create_task(sim.client.post(CHAT, json=chat_body(rid="busy", max_tokens=400, ignore_eos=True)))
    await wait_tokens(sim, "busy", 1)
    started = time.monotonic()
    assert (await sim.client.get("/health_generate")).status_code == 200  # its probe queued, yet tokens flow
    assert time.monotonic() - started < 1.0
    await sim.client.post("/abort_request", json={"abort_all": True})
    await task
    assert (await sim.stats())["queued"] == 0
