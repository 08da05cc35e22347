"""Every simulator response is what SGLang 0.5.23's own models would serialize for the same data.

Each body is validated with `sglang.srt.entrypoints.openai.protocol` (or the msgspec structs of `sse_utils` for
the chat text chunks SGLang writes with msgspec), then serialized again the way SGLang serializes that object,
and the result must equal the simulator's JSON exactly: same keys, same nulls, nothing missing, nothing
extra. A chunk with a `usage` key is one SGLang writes with pydantic (`model_dump_json`); one without it is a
msgspec `StreamChunk` (`build_sse_content`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sparsegate.backends.sim import FaultSettings

from ..sglang_support import import_sglang
from ..sim_support import CHAT, COMPLETIONS, MakeSim, Sim, chat_body, sse_events

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["q"],
        },
    },
}


@pytest.fixture(scope="module")
def protocol() -> ModuleType:
    (module,) = import_sglang("sglang.srt.entrypoints.openai.protocol")
    return module


@pytest.fixture(scope="module")
def sse_utils() -> ModuleType:
    (module,) = import_sglang("sglang.srt.entrypoints.openai.sse_utils")
    return module


def assert_pydantic(model: Any, body: dict[str, Any], **dump: Any) -> None:
    parsed = model.model_validate(body)
    assert json.loads(parsed.model_dump_json(**dump)) == body


def assert_msgspec_chunk(sse_utils: ModuleType, body: dict[str, Any]) -> None:
    import msgspec

    chunk = msgspec.json.decode(json.dumps(body), type=sse_utils.StreamChunk)
    assert json.loads(msgspec.json.encode(chunk)) == body


def check_chat_stream(protocol: ModuleType, sse_utils: ModuleType, events: list[Any]) -> list[dict[str, Any]]:
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        if "error" in chunk:
            assert set(chunk) == {"error"}
            assert_pydantic(protocol.ErrorResponse, chunk["error"])
        elif "usage" in chunk:
            assert_pydantic(protocol.ChatCompletionStreamResponse, chunk)
        else:
            assert_msgspec_chunk(sse_utils, chunk)
            protocol.ChatCompletionStreamResponse.model_validate(chunk)
    return [c for c in chunks if "error" not in c]


def check_completion_stream(protocol: ModuleType, events: list[Any], *, include_usage: bool) -> None:
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    last = len(chunks) - 1
    for position, chunk in enumerate(chunks):
        if "error" in chunk:
            assert_pydantic(protocol.ErrorResponse, chunk["error"])
        elif include_usage and position == last:
            assert_pydantic(protocol.CompletionStreamResponse, chunk, exclude_none=True)
        else:
            assert_pydantic(protocol.CompletionStreamResponse, chunk)


CHAT_CASES: dict[str, dict[str, Any]] = {
    "plain": chat_body(max_tokens=5),
    "n2": chat_body(n=2, max_tokens=3, rid="c-n2"),
    "stop": chat_body("stop test", stop=["a"], max_tokens=30),
    "logprobs": chat_body(logprobs=True, top_logprobs=2, max_tokens=4),
    "tools-auto": chat_body("find", tools=[TOOL]),
    "tools-required": chat_body("find", tools=[TOOL], tool_choice="required"),
    "tools-named": chat_body("find", tools=[TOOL], tool_choice={"type": "function", "function": {"name": "lookup"}}),
    "tools-length": chat_body("find", tools=[TOOL], tool_choice="required", max_tokens=2),
    "json-object": chat_body(response_format={"type": "json_object"}),
    "json-schema": chat_body(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": TOOL["function"]["parameters"]}}
    ),  # type: ignore[index]
    "seed": chat_body(seed=3, max_tokens=4),
}


@pytest.mark.parametrize("cache_report", [False, True], ids=["no-cache-report", "cache-report"])
@pytest.mark.parametrize("case", list(CHAT_CASES))
async def test_chat_matches_sglang_models(
    make_sim: MakeSim, protocol: ModuleType, sse_utils: ModuleType, case: str, cache_report: bool
) -> None:
    sim = await make_sim(enable_cache_report=cache_report)
    body = CHAT_CASES[case]
    whole = await sim.client.post(CHAT, json=body)
    assert whole.status_code == 200
    assert_pydantic(protocol.ChatCompletionResponse, whole.json())
    for usage in (False, True):
        stream = {**body, "stream": True, **({"stream_options": {"include_usage": True}} if usage else {})}
        events = sse_events((await sim.client.post(CHAT, json=stream)).text)
        chunks = check_chat_stream(protocol, sse_utils, events)
        assert ("usage" in chunks[-1] and chunks[-1]["choices"] == []) is usage


COMPLETION_CASES: dict[str, dict[str, Any]] = {
    "plain": {"prompt": "Once upon", "max_tokens": 4},
    "ids": {"prompt": [1, 2, 3], "max_tokens": 2},
    "batch-n2": {"prompt": ["a b", "c"], "n": 2, "max_tokens": 2},
    "echo-logprobs": {"prompt": "Echo", "echo": True, "logprobs": 2, "max_tokens": 3},
    "stop": {"prompt": "stop test", "stop": "a", "max_tokens": 30},
    "json": {"prompt": "j", "response_format": {"type": "json_object"}},
}


@pytest.mark.parametrize("cache_report", [False, True], ids=["no-cache-report", "cache-report"])
@pytest.mark.parametrize("case", list(COMPLETION_CASES))
async def test_completions_match_sglang_models(
    make_sim: MakeSim, protocol: ModuleType, case: str, cache_report: bool
) -> None:
    sim = await make_sim(enable_cache_report=cache_report)
    body = COMPLETION_CASES[case]
    whole = await sim.client.post(COMPLETIONS, json=body)
    assert whole.status_code == 200
    assert_pydantic(protocol.CompletionResponse, whole.json())
    for usage in (False, True):
        stream = {**body, "stream": True, **({"stream_options": {"include_usage": True}} if usage else {})}
        events = sse_events((await sim.client.post(COMPLETIONS, json=stream)).text)
        check_completion_stream(protocol, events, include_usage=usage)


async def test_aborts_match_sglang_models(make_sim: MakeSim, protocol: ModuleType, sse_utils: ModuleType) -> None:
    graceful = await make_sim(faults=FaultSettings(abort_after_tokens=2))
    whole = (await graceful.client.post(CHAT, json=chat_body(max_tokens=9))).json()
    assert_pydantic(protocol.ChatCompletionResponse, whole)
    assert whole["choices"][0]["finish_reason"] == "abort"
    events = sse_events((await graceful.client.post(CHAT, json=chat_body(max_tokens=9, stream=True))).text)
    check_chat_stream(protocol, sse_utils, events)
    failing = await make_sim(faults=FaultSettings(abort_after_tokens=2, abort_status=500))
    body = chat_body(max_tokens=9, stream=True, stream_options={"include_usage": True})
    events = sse_events((await failing.client.post(CHAT, json=body)).text)
    check_chat_stream(protocol, sse_utils, events)
    completion = {"prompt": "x", "max_tokens": 9, "stream": True}
    check_completion_stream(
        protocol, sse_events((await failing.client.post(COMPLETIONS, json=completion)).text), include_usage=False
    )
    refused = await failing.client.post(CHAT, json=chat_body(max_tokens=9))
    assert refused.status_code == 500
    assert_pydantic(protocol.ErrorResponse, refused.json())


@pytest.mark.parametrize(
    "request_",
    [
        ("POST", CHAT, {"messages": "x"}),
        ("POST", CHAT, {"messages": []}),
        ("POST", CHAT, chat_body("x" * 40000)),
        ("POST", CHAT, chat_body(tool_choice="required")),
        ("POST", COMPLETIONS, {"prompt": 5}),
        ("GET", "/nope", None),
        ("GET", "/v1/loads?include=bad", None),
    ],
    ids=["invalid-body", "empty-messages", "too-long", "tool-choice", "bad-prompt", "unknown-path", "bad-include"],
)
async def test_errors_match_sglang_error_response(
    sim: Sim, protocol: ModuleType, request_: tuple[str, str, dict[str, Any] | None]
) -> None:
    method, path, body = request_
    response = await sim.client.request(method, path, json=body)
    assert 400 <= response.status_code < 500
    assert_pydantic(protocol.ErrorResponse, response.json())


async def test_models_match_sglang_models(sim: Sim, protocol: ModuleType) -> None:
    assert_pydantic(protocol.ModelList, (await sim.client.get("/v1/models")).json())
    assert_pydantic(protocol.ModelCard, (await sim.client.get("/v1/models/sim-a")).json())
    missing = await sim.client.get("/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_v1_loads_entries_are_sglang_load_snapshots(make_sim: MakeSim) -> None:
    (load_snapshot,) = import_sglang("sglang.srt.managers.load_snapshot")
    section_types = {"memory": load_snapshot.MemoryMetrics, "queues": load_snapshot.QueueMetrics}
    sim = await make_sim()
    for include in (None, "core", "queues", "core,memory"):
        params = {"include": include} if include else {}
        body = (await sim.client.get("/v1/loads", params=params)).json()
        assert set(body) == {"timestamp", "version", "accelerator", "num_accelerators", "loads"}
        [entry] = body["loads"]
        # Sections are array-like msgspec structs: build them field by field.
        fields = {k: section_types[k](**v) if k in section_types else v for k, v in entry.items()}
        snapshot = load_snapshot.LoadSnapshot(**fields)
        sections = set(include.split(",")) if include else None
        assert snapshot.to_dict(sections) == entry


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sglang"


def _label_names(text: str) -> dict[str, set[frozenset[str]]]:
    names: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).add(frozenset(sample.labels) - {"dp_rank"})
    return names


@pytest.mark.parametrize(
    ("fixture", "priority"),
    [("metrics_plain.txt", False), ("metrics_priority_dp2.txt", True)],
    ids=["plain", "priority"],
)
async def test_scheduler_metrics_have_sglangs_names_and_labels(make_sim: MakeSim, fixture: str, priority: bool) -> None:
    sim = await make_sim(enable_priority_scheduling=priority)
    await sim.client.post(CHAT, json=chat_body(max_tokens=2, priority=1))
    ours = _label_names((await sim.client.get("/metrics")).text)
    real = _label_names((FIXTURES / fixture).read_text())
    scheduler = [n for n in ours if n in real]
    assert {"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:gen_throughput"} <= set(
        scheduler
    )
    for name in scheduler:
        assert ours[name] <= real[name], name


async def test_reasoning_matches_sglang_models(make_sim: MakeSim, protocol: ModuleType, sse_utils: ModuleType) -> None:
    sim = await make_sim(reasoning_parser="glm45", enable_cache_report=True)
    body = chat_body(max_tokens=6, ignore_eos=True)
    assert_pydantic(protocol.ChatCompletionResponse, (await sim.client.post(CHAT, json=body)).json())
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    check_chat_stream(protocol, sse_utils, sse_events((await sim.client.post(CHAT, json=stream)).text))
