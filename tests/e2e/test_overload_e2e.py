"""Overload end to end (issue 9): real sockets, a real Redis with the default limiter settings, sim workers.

What must hold when the gateway is pushed: bad bytes never reach a worker or its breaker, a burst of admissions is
exact, shed requests fail fast with a retry hint while no healthy worker is marked down, and clients that leave are
noticed at once (the worker is told, the tenant pays only for what was delivered).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import MODEL, Gateway, Sim, tenant, wait_until
from tests.redis_server import RedisServer

KEYS = {name: f"sk-{name}-0123456789abcdef" for name in ("burst", "load", "streams", "plain")}
HELLO = [{"role": "user", "content": "Hello there"}]
LONG = 2000  # tokens of a stream its client leaves


def _config(sim: Sim, redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "tenants": [
            tenant("burst", KEYS["burst"], limits={"rpm": 100}, on_limiter_failure="fail_closed"),
            tenant("load", KEYS["load"]),
            tenant("streams", KEYS["streams"], limits={"tpm": 10_000_000}),
            tenant("plain", KEYS["plain"]),
        ],
        "pools": [{"name": "main", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
        "redis_url": redis_url,  # the limiter's settings are left at their defaults (50 ms deadlines)
        **extra,
    }


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    sim = Sim(model=MODEL, max_context=32_768, args=["--itl-ms", "20"], workdir=tmp_path_factory.mktemp("sim"))
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def gateway(sim: Sim, redis: RedisServer, tmp_path: Path) -> Iterator[Gateway]:
    sim.reset()
    # Shedding on event-loop lag is tested on its own below; here a burst on a loaded 2-core box must reach the
    # limiter (and the relay) however far behind the loop runs.
    gw = Gateway(config=_config(sim, redis.url, overload={"max_loop_lag_ms": 600_000}), workdir=tmp_path).start()
    yield gw
    gw.stop()


def _headers(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}", "content-type": "application/json"}


async def _fire(url: str, name: str, bodies: list[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(url + "/v1/chat/completions", content=b, headers=_headers(name)) for b in bodies)
        )


def _chat(**extra: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 1, **extra}).encode()


def test_ten_lone_surrogates_then_a_normal_request(gateway: Gateway, sim: Sim) -> None:
    bad = b'{"model": "glm-5.1", "messages": [{"role": "user", "content": "\\ud800"}]}'
    for _ in range(10):
        resp = httpx.post(gateway.url + "/v1/chat/completions", content=bad, headers=_headers("plain"))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["type"] == "invalid_request_error" and resp.headers["x-request-id"]
    assert sim.stats()["received"] == 0, "nothing reached the worker"
    assert httpx.get(gateway.url + "/health/ready").json()["status"] == "ok", "no breaker moved"
    ok = httpx.post(gateway.url + "/v1/chat/completions", content=_chat(), headers=_headers("plain"))
    assert ok.status_code == 200, ok.text


def test_a_burst_of_300_admits_exactly_the_limit(gateway: Gateway) -> None:
    started = time.monotonic()
    responses = asyncio.run(_fire(gateway.url, "burst", [_chat() for _ in range(300)]))
    span = time.monotonic() - started
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, (
        statuses,
        {r.text for r in responses if r.status_code == 503},
    )  # Redis answered every call
    # rpm=100 refills one request every 0.6 s: only a burst slower than that may admit more than 100.
    assert 100 <= statuses[200] <= 100 + int(span / 0.6), (statuses, span)


def test_overload_sheds_fast_and_marks_no_worker_down(sim: Sim, redis: RedisServer, tmp_path: Path) -> None:
    # Twice what the process may hold at once, each request held ~0.2 s by the worker.
    gw = Gateway(config=_config(sim, redis.url, overload={"max_in_flight": 32}), workdir=tmp_path).start()
    try:
        responses = asyncio.run(_fire(gw.url, "load", [_chat(max_tokens=10) for _ in range(64)]))
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 503} and statuses[200] >= 32, statuses
        shed = [r for r in responses if r.status_code == 503]
        assert shed, "twice the bound sheds some"
        for r in shed:
            assert r.json()["error"]["type"] == "server_error" and "no healthy worker" not in r.text.lower()
            assert int(r.headers["retry-after"]) >= 1 and int(r.headers["retry-after-ms"]) > 0
        assert httpx.get(gw.url + "/health/ready").json()["status"] == "ok"
        assert "closed -> open" not in gw.output()
    finally:
        gw.stop()


async def _stream(url: str, leave_after: int | None, results: list[int]) -> None:
    """One raw streamed request; read `leave_after` events then close the socket (or read a short one to the end).
    The streams that are left are long (40 s of tokens), so they are still running when a starved client leaves."""
    max_tokens = LONG if leave_after is not None else 50
    # ignore_eos (an SGLang extension): the stream runs to max_tokens instead of the sim's natural stop
    body = json.dumps(
        {"model": MODEL, "messages": HELLO, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {KEYS['streams']}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    events = 0
    try:
        while leave_after is None or events < leave_after:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"data: {"):
                events += 1
            elif line.startswith(b"data: [DONE]"):
                break
    finally:
        writer.close()
    results.append(events)


def test_500_streams_half_leave_aborts_reach_the_worker_and_charges_match(gateway: Gateway, sim: Sim) -> None:
    left: list[int] = []
    stayed: list[int] = []

    async def run() -> None:
        await asyncio.gather(
            *(_stream(gateway.url, 3, left) for _ in range(250)),
            *(_stream(gateway.url, None, stayed) for _ in range(250)),
        )

    asyncio.run(run())
    assert len(left) == 250 and len(stayed) == 250
    assert wait_until(lambda: sim.stats()["aborted"] >= 250, timeout=20), {
        k: v for k, v in sim.stats().items() if k != "recent"
    }
    assert wait_until(lambda: sim.stats()["active"] == 0, timeout=20)
    lines = [json.loads(line) for line in gateway.stop().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request" and line.get("tenant") == "streams"]
    cancelled = [r for r in requests if r["outcome"] == "cancelled"]
    assert len(cancelled) == 250, Counter(r["outcome"] for r in requests)
    # Charged for what was written to the client before it closed (it read 3 events, the first with the role only;
    # on a loaded box more may have been sent into its socket), never the reservation: far below LONG.
    assert all(1 <= r["completion_tokens"] <= LONG // 10 for r in cancelled), sorted(
        r["completion_tokens"] for r in cancelled
    )
