"""Helpers shared by the simulator's tests (the fixtures `make_sim` and `sim` are in conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sparsegate.backends.sim import SimState

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


async def wait_tokens(sim: Sim, rid: str, tokens: int) -> None:
    async def enough() -> bool:
        return any(
            entry["rid"] == rid and entry["completion_tokens"] >= tokens for entry in (await sim.stats())["recent"]
        )

    await wait_until(enough)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample `name` whose labels include `labels` (None when there is none)."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} series"
    return found[0] if found else None
