"""What the simulator does with SGLang's request features: n > 1 rids, aborts, tools, response_format,
logprobs, seed, echo, prompt arrays, cached tokens and the prefix cache, /v1/loads and priority metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest

from sparsegate.backends.sim import FaultSettings

from .sim_support import CHAT, COMPLETIONS, MakeSim, Sim, chat_body, metric_value, sse_events, wait_tokens, wait_until

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "hourly": {"type": "boolean"},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "tags": {"type": "array"}},
            "required": ["lat"],
        },
        "when": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
        "stops": {"type": "array", "items": {"$ref": "#/$defs/stop"}, "minItems": 2, "maxItems": 4},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
    "$defs": {"stop": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
]


# --- n > 1 ------------------------------------------------------------------------------------------------------


async def test_n_expands_rids_into_ids_per_choice(sim: Sim) -> None:
    body = (await sim.client.post(CHAT, json=chat_body(n=2, rid="nn", max_tokens=3))).json()
    assert body["id"] == "nn_0"  # ret[0]["meta_info"]["id"]
    events = sse_events((await sim.client.post(CHAT, json=chat_body(n=2, rid="ns", max_tokens=3, stream=True))).text)
    chunks = events[:-1]
    by_index = {
        i: {c["id"] for c in chunks if c["choices"][0]["index"] == i and c["choices"][0]["finish_reason"] is None}
        for i in (0, 1)
    }
    assert by_index == {0: {"ns_0"}, 1: {"ns_1"}}
    finishes = [c for c in chunks if c["choices"][0]["finish_reason"] is not None]
    assert [c["choices"][0]["index"] for c in finishes] == [0, 1]  # sent after both ended, with the last id
    assert len({c["id"] for c in finishes}) == 1


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("hi there", "one"), ([1, 2, 3], "one"), (["hi there"], "one_0"), ([[1, 2, 3]], "one_0")],
    ids=["string", "token-ids", "list-of-one-string", "list-of-one-token-list"],
)
async def test_a_prompt_list_of_one_is_a_batch_and_expands_the_rid(sim: Sim, prompt: Any, expected: str) -> None:
    # io_struct._determine_batch_size: a list of texts (or of id lists) is a batch whatever its length, and
    # _normalize_rid then turns the rid into rid_0.
    body = {"model": "sim-a", "prompt": prompt, "max_tokens": 2, "rid": "one"}
    answer = (await sim.client.post(COMPLETIONS, json=body)).json()
    assert answer["id"] == expected


async def test_abort_of_base_rid_does_nothing_for_n_gt_1_but_rid_i_aborts_that_choice(make_sim: MakeSim) -> None:
    sim = await make_sim(itl_ms=5.0)
    body = chat_body(n=2, rid="nb", max_tokens=300, ignore_eos=True)
    waiting = asyncio.create_task(sim.client.post(CHAT, json=body))
    await wait_tokens(sim, "nb", 4)
    await sim.client.post("/abort_request", json={"rid": "nb"})
    assert {"nb_0", "nb_1"} <= set((await sim.stats())["rids_active"])  # as SGLang: the base rid matches nothing
    await sim.client.post("/abort_request", json={"rid": "nb_1"})
    await wait_until(lambda: _choice_gone(sim, "nb_1"))
    await sim.client.post("/abort_request", json={"rid": "nb_0"})
    response = (await waiting).json()
    assert [c["finish_reason"] for c in response["choices"]] == ["abort", "abort"]
    assert all(c["matched_stop"] is None for c in response["choices"])
    assert response["usage"]["completion_tokens"] < 600


async def _choice_gone(sim: Sim, rid: str) -> bool:
    # A choice that ended stays listed until the whole request settles; watch the loads instead.
    [load] = (await sim.client.get("/v1/loads")).json()["loads"]
    return bool(load["num_running_reqs"] == 1)


# --- worker aborts ------------------------------------------------------------------------------------------------


async def test_worker_abort_without_status_is_finish_reason_abort(make_sim: MakeSim) -> None:
    sim = await make_sim(faults=FaultSettings(abort_after_tokens=2))
    body = (await sim.client.post(CHAT, json=chat_body(max_tokens=10, ignore_eos=True))).json()
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == ("abort", 2)
    events = sse_events((await sim.client.post(CHAT, json=chat_body(max_tokens=10, stream=True))).text)
    assert events[-2]["choices"][0]["finish_reason"] == "abort"


async def test_worker_abort_with_status_is_an_error_event_or_an_http_error(make_sim: MakeSim) -> None:
    sim = await make_sim(faults=FaultSettings(abort_after_tokens=2, abort_status=503))
    body = chat_body(max_tokens=10, stream=True, stream_options={"include_usage": True})
    events = sse_events((await sim.client.post(CHAT, json=body)).text)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert errors == [
        {"error": {"object": "error", "message": "Aborted", "type": "SERVICE_UNAVAILABLE", "param": None, "code": 503}}
    ]
    assert events[-2]["usage"]["completion_tokens"] == 2 and events[-1] == "[DONE]"
    response = await sim.client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 10})
    assert response.status_code == 503
    assert response.json() == {"object": "error", "message": "Aborted", "type": "503", "param": None, "code": 503}


# --- tools --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}])
async def test_tool_calls_are_valid_for_the_schema(sim: Sim, choice: Any) -> None:
    body = (await sim.client.post(CHAT, json=chat_body("weather?", tools=TOOLS, tool_choice=choice))).json()
    [c] = body["choices"]
    assert c["finish_reason"] == "tool_calls" and c["matched_stop"] is None
    assert c["message"]["content"] == ""
    [call] = c["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function" and call["index"] == 0
    tool = next(t for t in TOOLS if t["function"]["name"] == call["function"]["name"])
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
    if isinstance(choice, dict):
        assert call["function"]["name"] == "get_weather"


async def test_streamed_tool_call_reassembles_to_the_non_streamed_one(sim: Sim) -> None:
    request = chat_body("weather?", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = (await sim.client.post(CHAT, json=request)).json()["choices"][0]["message"]["tool_calls"][0]
    events = sse_events((await sim.client.post(CHAT, json={**request, "stream": True})).text)
    calls = [e["choices"][0]["delta"]["tool_calls"][0] for e in events[:-1] if "tool_calls" in e["choices"][0]["delta"]]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""} and calls[0]["id"].startswith("call_")
    assert all(c["id"] is None and c["function"]["name"] is None for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == whole["function"]["arguments"]
    tool_chunks = [e for e in events[:-1] if "tool_calls" in e["choices"][0]["delta"]]
    assert all(e["choices"][0]["delta"]["role"] is None and e["usage"] is None for e in tool_chunks)
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_choice_auto_answers_in_text_after_a_tool_result_and_none_never_calls(sim: Sim) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "noop", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "sunny"},
    ]
    after = (await sim.client.post(CHAT, json={"messages": messages, "tools": TOOLS})).json()["choices"][0]
    assert after["finish_reason"] == "stop" and "tool_calls" not in after["message"]
    none = (await sim.client.post(CHAT, json=chat_body(tools=TOOLS, tool_choice="none"))).json()["choices"][0]
    assert "tool_calls" not in none["message"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tool_choice": "required"}, "Tools cannot be empty if tool choice is set to required."),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "Tool 'x' not found in tools list.",
        ),
    ],
)
async def test_tool_choice_refusals_are_sglangs(sim: Sim, extra: dict[str, Any], message: str) -> None:
    response = await sim.client.post(CHAT, json=chat_body(**extra))
    assert response.status_code == 400
    assert response.json() == {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


# --- response_format, logprobs, seed, echo, prompt arrays ----------------------------------------------------------


async def test_response_format_json_schema_and_json_object(sim: Sim) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    text = (await sim.client.post(CHAT, json=chat_body(response_format=fmt))).json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(text), WEATHER)
    obj = (await sim.client.post(CHAT, json=chat_body(response_format={"type": "json_object"}))).json()
    assert isinstance(json.loads(obj["choices"][0]["message"]["content"]), dict)
    events = sse_events((await sim.client.post(CHAT, json=chat_body(response_format=fmt, stream=True))).text)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == text


async def test_logprobs_are_deterministic_and_match_the_text(sim: Sim) -> None:
    request = chat_body("lp", logprobs=True, top_logprobs=3, max_tokens=4)
    first, again = [(await sim.client.post(CHAT, json=request)).json()["choices"][0] for _ in range(2)]
    assert first["logprobs"] == again["logprobs"]
    content = first["logprobs"]["content"]
    assert "".join(item["token"] for item in content) == first["message"]["content"]
    for item in content:
        assert len(item["top_logprobs"]) == 3 and item["top_logprobs"][0]["token"] == item["token"]
        assert item["bytes"] == list(item["token"].encode())
        assert [t["logprob"] for t in item["top_logprobs"]] == sorted(
            (t["logprob"] for t in item["top_logprobs"]), reverse=True
        )
    streamed = sse_events((await sim.client.post(CHAT, json={**request, "stream": True})).text)
    items = [i for e in streamed[:-1] if e["choices"][0]["logprobs"] for i in e["choices"][0]["logprobs"]["content"]]
    assert items == content
    completion = (await sim.client.post(COMPLETIONS, json={"prompt": "lp", "logprobs": 2, "max_tokens": 3})).json()
    lp = completion["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == completion["choices"][0]["text"] and len(lp["top_logprobs"][0]) == 2


async def test_seed_makes_output_repeatable_and_different(sim: Sim) -> None:
    async def text(**extra: Any) -> str:
        body = (await sim.client.post(CHAT, json=chat_body("seeded", max_tokens=8, **extra))).json()
        return str(body["choices"][0]["message"]["content"])

    assert await text(seed=1) == await text(seed=1)
    assert await text(seed=1) != await text(seed=2)


async def test_echo_and_prompt_arrays(sim: Sim) -> None:
    echoed = (await sim.client.post(COMPLETIONS, json={"prompt": "Echo me", "max_tokens": 2, "echo": True})).json()
    assert echoed["choices"][0]["text"].startswith("Echo me")
    batch = {"prompt": ["one", "two two"], "max_tokens": 2, "n": 2, "rid": "bt"}
    body = (await sim.client.post(COMPLETIONS, json=batch)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3] and body["id"] == "bt_0"
    single = [(await sim.client.post(COMPLETIONS, json={"prompt": p, "max_tokens": 2})).json() for p in batch["prompt"]]
    assert body["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in single)
    assert body["choices"][2]["text"] == single[1]["choices"][0]["text"]
    streamed = sse_events((await sim.client.post(COMPLETIONS, json={**batch, "stream": True, "rid": "bs"})).text)
    assert {e["id"] for e in streamed[:-1]} == {"bs_0", "bs_1", "bs_2", "bs_3"}


# --- prefix cache and cached_tokens --------------------------------------------------------------------------------


async def test_cached_tokens_reported_with_cache_report_and_ttft_counts_only_uncached(make_sim: MakeSim) -> None:
    sim = await make_sim(enable_cache_report=True)
    prompt = "a long shared system prompt " * 40
    first = (await sim.client.post(CHAT, json=chat_body(prompt, max_tokens=1, rid="c1"))).json()
    second = (await sim.client.post(CHAT, json=chat_body(prompt, max_tokens=1, rid="c2"))).json()
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert 0.8 * second["usage"]["prompt_tokens"] < cached < second["usage"]["prompt_tokens"]
    assert (await sim.record("c2"))["cached_tokens"] == cached
    text = (await sim.client.get("/metrics")).text
    assert metric_value(text, "sglang:cached_tokens_total", cache_source="device") == cached


async def test_prefix_cache_is_bounded_lru(make_sim: MakeSim) -> None:
    sim = await make_sim(enable_cache_report=True, prefix_cache_tokens=300)
    a, b = "alpha prompt " * 60, "bravo prompt " * 60  # ~200 tokens each: the cache holds one of them

    async def cached(prompt: str) -> int:
        body = (await sim.client.post(CHAT, json=chat_body(prompt, max_tokens=1))).json()
        return int(body["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert await cached(a) == 0
    assert await cached(a) > 0
    assert await cached(b) == 0  # evicts a
    assert await cached(a) == 0


# --- load endpoints and priority metrics --------------------------------------------------------------------------


async def test_v1_loads_and_legacy_get_load(make_sim: MakeSim) -> None:
    sim = await make_sim()
    body = (await sim.client.get("/v1/loads")).json()
    assert set(body) == {"timestamp", "version", "accelerator", "num_accelerators", "loads"}
    assert body["version"] == "0.5.23" and set(body["loads"][0]) >= {"dp_rank", "num_running_reqs", "memory", "queues"}
    core = (await sim.client.get("/v1/loads", params={"include": "core"})).json()["loads"][0]
    assert "memory" not in core and "queues" not in core
    bad = await sim.client.get("/v1/loads", params={"include": "nope"})
    assert bad.status_code == 400 and bad.json()["type"] == "400"
    prom = (await sim.client.get("/v1/loads", params={"format": "prometheus"})).text
    assert 'sglang_num_running_reqs{dp_rank="0"} 0' in prom and 'sglang_queues_waiting{dp_rank="0"} 0' in prom
    assert (await sim.client.get("/get_load")).status_code == 404  # 0.5.23 has none
    old = await make_sim(legacy_get_load=True)
    assert (await old.client.get("/get_load")).json()[0]["num_reqs"] == 0


async def test_priority_metrics_have_totals_and_per_priority_series(make_sim: MakeSim) -> None:
    sim = await make_sim(enable_priority_scheduling=True, max_running=1, itl_ms=5.0)
    tasks = [
        asyncio.create_task(
            sim.client.post(CHAT, json=chat_body(rid=f"p{i}", priority=p, max_tokens=300, ignore_eos=True))
        )
        for i, p in enumerate([1, 5, 5])
    ]

    async def queued() -> bool:
        [load] = (await sim.client.get("/v1/loads")).json()["loads"]
        return bool(load["num_waiting_reqs"] == 2)

    await wait_until(queued)
    # As in SGLang, a priority first seen in the queue gets its running series at the next log interval.
    await sim.client.get("/metrics")
    text = (await sim.client.get("/metrics")).text
    running = {p: metric_value(text, "sglang:num_running_reqs", priority=p) for p in ("", "1", "5")}
    waiting = {p: metric_value(text, "sglang:num_queue_reqs", priority=p) for p in ("", "1", "5")}
    assert running == {"": 1.0, "1": 1.0, "5": 0.0}
    assert waiting == {"": 2.0, "1": 0.0, "5": 2.0}
    await sim.client.post("/abort_request", json={"abort_all": True})
    await asyncio.gather(*tasks)


# --- reasoning ------------------------------------------------------------------------------------------------------


async def test_reasoning_parser_sends_reasoning_content_and_counts_reasoning_tokens(make_sim: MakeSim) -> None:
    sim = await make_sim(reasoning_parser="glm45")
    body = (await sim.client.post(CHAT, json=chat_body("think", max_tokens=9, ignore_eos=True))).json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"]
    assert body["usage"]["reasoning_tokens"] == 3
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    request = chat_body("think", max_tokens=9, ignore_eos=True, stream=True)
    events = sse_events((await sim.client.post(CHAT, json=request)).text)
    deltas = [e["choices"][0]["delta"] for e in events[1:-2]]
    assert "".join(d["reasoning_content"] or "" for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    together = (
        await sim.client.post(CHAT, json=chat_body("think", max_tokens=9, ignore_eos=True, separate_reasoning=False))
    ).json()
    assert together["choices"][0]["message"]["reasoning_content"] is None
    assert together["choices"][0]["message"]["content"] == message["reasoning_content"] + message["content"]
