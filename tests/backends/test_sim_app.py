"""The simulated worker's HTTP surface, driven in process through `httpx.ASGITransport`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sparsegate.backends.sim import FaultSettings, SimConfig, SimState, create_app

FAST: dict[str, Any] = {
    "model": "sim-a",
    "max_context": 4096,
    "ttft_base_ms": 1.0,
    "ttft_per_1k_prompt_tokens_ms": 0.0,
    "itl_ms": 1.0,
    "itl_per_running_ms": 0.0,
    "disconnect_detect_ms": 200.0,
}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass
class Sim:
    client: httpx.AsyncClient
    state: SimState

    async def stats(self) -> dict[str, Any]:
        response = await self.client.get("/sim/stats")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def record(self, rid: str) -> dict[str, Any]:
        matches: list[dict[str, Any]] = [entry for entry in (await self.stats())["recent"] if entry["rid"] == rid]
        assert matches, f"no record of {rid}"
        return matches[-1]


MakeSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    made: list[Sim] = []

    async def make(**overrides: Any) -> Sim:
        state = SimState.build(SimConfig(**{**FAST, **overrides}))
        transport = httpx.ASGITransport(app=create_app(state.config, state=state))
        sim = Sim(httpx.AsyncClient(transport=transport, base_url="http://sim"), state)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        await sim.client.aclose()
        await sim.state.aclose()


@pytest.fixture
async def sim(make_sim: MakeSim) -> Sim:
    return await make_sim()


def chat_body(content: str = "Say something.", **extra: Any) -> dict[str, Any]:
    return {"model": "sim-a", "messages": [{"role": "user", "content": content}], **extra}


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into JSON payloads (and the literal "[DONE]"), checking the framing."""
    assert text.endswith("\n\n")
    events: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    # Polls over HTTP on purpose: tests watch the sim only through its public endpoints.
    async with asyncio.timeout(5.0):
        while True:
            if await check():
                return
            await asyncio.sleep(0.005)


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
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


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
    assert body["id"].startswith("cmpl-")
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
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [len(delta["content"].split()) for delta in deltas[1:-1]] == [1, 1, 1, 1]
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
    assert usage_chunk["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert all(event["usage"] is None for event in events[:-2])


async def test_completions_stream_with_usage(sim: Sim) -> None:
    body = {"prompt": "Once upon", "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events((await sim.client.post(COMPLETIONS, json=body)).text)
    assert [event["object"] for event in events[:-1]] == ["text_completion"] * 4
    assert events[-1] == "[DONE]"
    assert events[2]["choices"][0]["finish_reason"] == "length"
    assert events[3]["usage"]["completion_tokens"] == 2


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


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": "3"},
        {"messages": [{"role": "user", "content": "x"}], "n": 0},
        {"messages": [{"role": "user", "content": "x"}], "stop": [1]},
        {"messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        {"messages": [{"role": "user", "content": "x"}], "rid": 5},
    ],
    ids=["empty", "not-list", "no-role", "bad-content", "neg-max", "str-max", "n0", "bad-stop", "bad-stream", "rid"],
)
async def test_bad_bodies_are_400(sim: Sim, body: dict[str, Any]) -> None:
    response = await sim.client.post(CHAT, json=body)
    assert response.status_code == 400
    assert response.json()["type"] == "BadRequest"


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


async def _wait_tokens(sim: Sim, rid: str, tokens: int) -> None:
    async def enough() -> bool:
        return any(
            entry["rid"] == rid and entry["completion_tokens"] >= tokens for entry in (await sim.stats())["recent"]
        )

    await wait_until(enough)


async def test_abort_ends_a_stream_with_finish_reason_abort(make_sim: MakeSim) -> None:
    sim = await make_sim(itl_ms=5.0)
    body = chat_body(rid="ab-1", stream=True, max_tokens=400, ignore_eos=True, stream_options={"include_usage": True})
    streaming = asyncio.create_task(sim.client.post(CHAT, json=body))
    await _wait_tokens(sim, "ab-1", 3)
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
    await _wait_tokens(sim, "ab-2", 2)
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
        [load] = (await sim.client.get("/get_load")).json()
        decoding = any(entry["completion_tokens"] > 0 for entry in (await sim.stats())["recent"])
        return bool(load["num_waiting_reqs"] == 2 and load["num_reqs"] == 3 and decoding)

    await wait_until(two_waiting_one_decoding)
    metrics = (await sim.client.get("/metrics")).text
    assert 'sglang:num_queue_reqs{model_name="sim-a"} 2.0' in metrics
    assert 'sglang:num_running_reqs{model_name="sim-a"} 1.0' in metrics
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
    assert response.json()["type"] == "ServiceUnavailable"
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
    assert 'sglang:prompt_tokens_total{model_name="sim-a"} 11.0' in text
    assert 'sglang:generation_tokens_total{model_name="sim-a"} 5.0' in text
    other = (await second.client.get("/metrics")).text
    assert 'sglang:generation_tokens_total{model_name="sim-b"} 0.0' in other


async def test_token_usage_while_running(make_sim: MakeSim) -> None:
    sim = await make_sim(max_total_tokens=100, itl_ms=5.0)
    task = asyncio.create_task(sim.client.post(CHAT, json=chat_body(rid="u-1", max_tokens=400, ignore_eos=True)))
    await _wait_tokens(sim, "u-1", 1)
    [load] = (await sim.client.get("/get_load")).json()
    assert load["token_usage"] >= 0.12  # (11 prompt + >= 1 generated) / 100
    await sim.client.post("/abort_request", json={"rid": "u-1"})
    await task
    [load] = (await sim.client.get("/get_load")).json()
    assert (load["token_usage"], load["num_tokens"]) == (0.0, 0)


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
    await _wait_tokens(sim, "busy", 1)
    started = time.monotonic()
    assert (await sim.client.get("/health_generate")).status_code == 200  # its probe queued, yet tokens flow
    assert time.monotonic() - started < 1.0
    await sim.client.post("/abort_request", json={"abort_all": True})
    await task
    assert (await sim.stats())["queued"] == 0
