"""The simulated worker on a real socket (uvicorn in this event loop): cuts, late disconnect notice, stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn

from sparsegate.backends.sim import FaultSettings, SimConfig, create_app

FAST: dict[str, Any] = {
    "model": "sim-wire",
    "ttft_base_ms": 1.0,
    "ttft_per_1k_prompt_tokens_ms": 0.0,
    "itl_ms": 10.0,
    "itl_per_running_ms": 0.0,
    "disconnect_detect_ms": 600.0,
}
CHAT = "/v1/chat/completions"
LONG = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 2000, "ignore_eos": True}

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> str:
        config = SimConfig(**{**FAST, **overrides})
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config),
                host="127.0.0.1",
                port=0,
                # Leave the process's logging alone: uvicorn's log_config and log_level would reconfigure the
                # `uvicorn.*` loggers for every later test in this process.
                log_config=None,
                log_level=None,
                timeout_graceful_shutdown=1,
            )
        )
        task = asyncio.create_task(server.serve())
        running.append((server, task))
        async with asyncio.timeout(10):
            while True:
                if server.started:
                    break
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in running:
        server.should_exit = True
        await task


async def _find(client: httpx.AsyncClient, rid: str) -> dict[str, Any] | None:
    for entry in (await client.get("/sim/stats")).json()["recent"]:
        if entry["rid"] == rid:
            return dict(entry)
    return None


async def _record(client: httpx.AsyncClient, rid: str) -> dict[str, Any]:
    record = await _find(client, rid)
    assert record is not None, f"no record of {rid}"
    return record


async def _until(client: httpx.AsyncClient, rid: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            record = await _find(client, rid)
            if record is not None and check(record):
                return record
            await asyncio.sleep(0.01)


async def _read_stream(client: httpx.AsyncClient, body: dict[str, Any], lines: list[str]) -> None:
    async with client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line:
                lines.append(line)


async def test_drop_after_tokens_cuts_a_stream(serve: Serve) -> None:
    url = await serve(faults=FaultSettings(drop_after_tokens=3))
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await _read_stream(client, {**LONG, "stream": True, "rid": "cut-1"}, lines)
        record = await _until(client, "cut-1", lambda r: r["status"] != "running")
    assert len(lines) == 4  # the role chunk and three tokens
    assert "data: [DONE]" not in lines
    assert record["status"] == "failed"


async def test_drop_after_tokens_cuts_a_whole_response(serve: Serve) -> None:
    url = await serve(faults=FaultSettings(drop_after_tokens=2))
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(CHAT, json={**LONG, "rid": "cut-2"})


async def test_stall_sends_no_byte_before_the_first_token(serve: Serve) -> None:
    url = await serve(faults=FaultSettings(stall_ms=300))
    async with httpx.AsyncClient(base_url=url) as client:
        started = time.monotonic()
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": True}
        async with client.stream("POST", CHAT, json=body) as response:
            headers_after = time.monotonic() - started
            text = (await response.aread()).decode()
    assert headers_after >= 0.3
    assert text.endswith("data: [DONE]\n\n")


async def _leave_mid_stream(client: httpx.AsyncClient, rid: str) -> None:
    async with client.stream("POST", CHAT, json={**LONG, "stream": True, "rid": rid}) as response:
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break  # leaving the block closes the connection


async def test_client_disconnect_is_noticed_late(serve: Serve) -> None:
    url = await serve()
    async with httpx.AsyncClient(base_url=url) as client:
        await _leave_mid_stream(client, "gone-1")
        left_at = time.monotonic()
        before = await _record(client, "gone-1")
        await asyncio.sleep(0.2)
        still = await _record(client, "gone-1")
        assert still["status"] == "running"  # generation goes on, as in SGLang
        assert still["completion_tokens"] > before["completion_tokens"]
        record = await _until(client, "gone-1", lambda r: r["status"] != "running")
        noticed_after = time.monotonic() - left_at
        stats = (await client.get("/sim/stats")).json()
    assert record["status"] == "disconnected"
    assert record["finish_reason"] == "abort"
    assert noticed_after >= 0.55
    assert (stats["disconnected"], stats["aborted"], stats["active"]) == (1, 0, 0)


async def test_abort_after_disconnect_counts_as_aborted(serve: Serve) -> None:
    url = await serve()
    async with httpx.AsyncClient(base_url=url) as client:
        await _leave_mid_stream(client, "gone-2")
        left_at = time.monotonic()
        assert (await client.post("/abort_request", json={"rid": "gone-2"})).status_code == 200
        record = await _until(client, "gone-2", lambda r: r["status"] != "running")
        stopped_after = time.monotonic() - left_at
        stats = (await client.get("/sim/stats")).json()
    assert record["status"] == "aborted"
    assert stopped_after < 0.5  # well before the 0.6 s it takes to notice a disconnect
    assert (stats["aborted"], stats["disconnected"]) == (1, 0)


async def test_non_stream_disconnect_is_noticed_late_too(serve: Serve) -> None:
    url = await serve()
    async with httpx.AsyncClient(base_url=url) as client, httpx.AsyncClient(base_url=url) as leaving:
        request = asyncio.create_task(leaving.post(CHAT, json={**LONG, "rid": "gone-3"}))
        await _until(client, "gone-3", lambda r: r["completion_tokens"] >= 2)
        request.cancel()  # drops the connection mid-request
        await asyncio.gather(request, return_exceptions=True)
        left_at = time.monotonic()
        record = await _until(client, "gone-3", lambda r: r["status"] != "running")
    assert record["status"] == "disconnected"
    assert time.monotonic() - left_at >= 0.5
