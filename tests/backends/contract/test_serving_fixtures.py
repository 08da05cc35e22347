"""The simulator answers like SGLang's own serving code: its output for a scenario has the shape of the fixture
that SGLang's `OpenAIServingChat` / `OpenAIServingCompletion` produced for the same scenario
(tests/fixtures/sglang, built by build.py).

Texts, token counts and timestamps differ (the simulator picks its own words), so events are compared as
skeletons: every key and every null kept, strings and numbers reduced to their type, except the values that
carry meaning (`object`, `role`, `finish_reason`, error `type` and `code`), and ids reduced to `rid` or
`rid_i`. Both sides must use the same set of event skeletons, and for one choice the same order of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sparsegate.backends.sim import FaultSettings

from ..sim_support import CHAT, COMPLETIONS, MakeSim, sse_events

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sglang"
KEPT = {"object", "role", "finish_reason", "type", "code"}
RID = "gw-1"

# scenario -> (extra request fields, faults, a single choice?)
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "usage": ({"stream_options": {"include_usage": True}, "max_tokens": 3, "ignore_eos": True}, {}, True),
    "n2": ({"n": 2, "stream_options": {"include_usage": True}, "max_tokens": 3}, {}, False),
    "abort": ({"stream_options": {"include_usage": True}, "max_tokens": 9}, {"abort_after_tokens": 2}, True),
    "error_abort": (
        {"stream_options": {"include_usage": True}, "max_tokens": 9},
        {"abort_after_tokens": 2, "abort_status": 503},
        True,
    ),
}
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


def skeleton(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, skeleton(v, k)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(sorted({skeleton(v) for v in value}, key=repr))
    if key == "id" and isinstance(value, str):
        return "rid_i" if re.fullmatch(rf"{RID}_\d+", value) else "rid"
    if key in KEPT or value is None or isinstance(value, bool):
        return value
    return type(value).__name__


def collapsed(events: list[Any]) -> list[Any]:
    shapes = [skeleton(e) for e in events]
    return [s for i, s in enumerate(shapes) if i == 0 or s != shapes[i - 1]]


def fixture_events(name: str) -> list[Any]:
    return sse_events((FIXTURES / name).read_text())


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("endpoint", ["chat", "completion"])
async def test_streams_have_the_shape_of_sglangs_serving_code(make_sim: MakeSim, endpoint: str, scenario: str) -> None:
    extra, faults, single = SCENARIOS[scenario]
    sim = await make_sim(enable_cache_report=True, faults=FaultSettings(**faults))
    path, base = (
        (CHAT, {"messages": [{"role": "user", "content": "hi"}]})
        if endpoint == "chat"
        else (COMPLETIONS, {"prompt": "hi"})
    )
    response = await sim.client.post(path, json={**base, "rid": RID, "stream": True, **extra})
    ours = sse_events(response.text)
    theirs = fixture_events(f"{endpoint}_{scenario}.sse")
    assert {skeleton(e) for e in ours} == {skeleton(e) for e in theirs}
    if single:
        assert collapsed(ours) == collapsed(theirs)


@pytest.mark.parametrize("scenario", ["usage", "n2", "abort"])
@pytest.mark.parametrize("endpoint", ["chat", "completion"])
async def test_responses_have_the_shape_of_sglangs_serving_code(
    make_sim: MakeSim, endpoint: str, scenario: str
) -> None:
    extra, faults, _ = SCENARIOS[scenario]
    extra = {k: v for k, v in extra.items() if k != "stream_options"}
    sim = await make_sim(enable_cache_report=True, faults=FaultSettings(**faults))
    path, base = (
        (CHAT, {"messages": [{"role": "user", "content": "hi"}]})
        if endpoint == "chat"
        else (COMPLETIONS, {"prompt": "hi"})
    )
    ours = (await sim.client.post(path, json={**base, "rid": RID, **extra})).json()
    theirs = json.loads((FIXTURES / f"{endpoint}_{scenario}.json").read_text())
    assert skeleton(ours) == skeleton(theirs)


async def test_tool_calls_have_the_shape_of_sglangs_glm47_parser_output(make_sim: MakeSim) -> None:
    sim = await make_sim(enable_cache_report=True)
    request = {"messages": [{"role": "user", "content": "hi"}], "rid": RID, "tools": [LOOKUP], "tool_choice": "auto"}
    ours = sse_events((await sim.client.post(CHAT, json={**request, "stream": True})).text)
    theirs = fixture_events("chat_tools.sse")
    assert {skeleton(e) for e in ours} == {skeleton(e) for e in theirs}
    assert collapsed(ours) == collapsed(theirs)
    whole = (await sim.client.post(CHAT, json=request)).json()
    assert skeleton(whole) == skeleton(json.loads((FIXTURES / "chat_tools.json").read_text()))
