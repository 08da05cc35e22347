"""Admission end to end: two gateway processes sharing one real Redis, sim workers, raw HTTP and the openai SDK.

Limits are chosen so that refill during a burst stays under one request's worth (e.g. rpm=20 refills one request
per 3 s), which is what makes "exactly the limit" a fair assertion; where a slow machine could stretch a burst
past that, the assertion allows exactly the refill the burst's wall time could have added.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.harness import KEY_ACME, MODEL, Gateway, Sim, tenant, wait_until
from tests.gateway.limits.support import parse_go_duration
from tests.redis_server import RedisServer

BOUND_S = 1.0  # no request may take longer than this while Redis is down (timeouts are 50 ms)
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about token buckets"}]


def _key(name: str) -> str:
    return f"sk-{name}-0123456789abcdef"


def _tenants(*specs: tuple[str, dict[str, Any], str]) -> list[dict[str, Any]]:
    return [tenant(name, _key(name), limits=limits, on_limiter_failure=policy) for name, limits, policy in specs] + [
        tenant("acme", KEY_ACME)
    ]


def _config(sim: Sim, redis_url: str, tenants: list[dict[str, Any]], *, steady: bool) -> dict[str, Any]:
    limiter: dict[str, Any] = {"key_prefix": f"e2e{uuid.uuid4().hex[:6]}", "heartbeat_s": 0.2, "breaker_reset_s": 0.5}
    if steady:
        # Exactness tests on a healthy Redis: a 200-client burst on a 2-core CI box can hold the event loop past
        # the production 50 ms budget, and a timed-out admission (correctly) falls back to the inexact fail-open
        # share. The Redis-stopped test keeps the production timeouts.
        limiter |= {"socket_timeout_s": 2.0, "connect_timeout_s": 2.0}
    return {
        "tenants": tenants,
        "pools": [{"name": "main", "model": MODEL, "max_context": 300_000, "workers": [sim.url]}],
        "redis_url": redis_url,
        "limiter": limiter,
        # The worker fails on purpose in some tests: keep its breaker closed so they see the failures themselves.
        "health": {"failure_threshold": 1000},
    }


TENANTS = _tenants(
    ("rpm", {"rpm": 20}, "fail_open"),
    ("tpm", {"tpm": 1}, "fail_open"),  # replaced below once a reservation's size is known
    ("natural", {"tpm": 6000}, "fail_open"),
    ("conc", {"max_concurrent": 4}, "fail_open"),
    ("headers", {"rpm": 60, "tpm": 60_000}, "fail_open"),
    ("sdk", {"rpm": 12, "tpm": 100_000}, "fail_open"),
    ("probe", {"tpm": 1_000_000}, "fail_open"),
)


@dataclass
class Stack:
    gateways: list[Gateway]
    sim: Sim
    redis: RedisServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two gateways on one Redis and one sim (50 ms per token, so streams outlast a burst of admissions)."""
    workdir: Path = tmp_path_factory.mktemp("admission")
    with RedisServer() as redis:
        sim = Sim(model=MODEL, max_context=300_000, args=["--itl-ms", "50"], workdir=workdir).start()
        # One reservation's size (the gateway's prompt estimate + max_tokens), as the probe tenant's bucket shows it.
        tenants = [dict(t) for t in TENANTS]
        config = _config(sim, redis.url, tenants, steady=True)
        probe = Gateway(config=config, workdir=workdir).start()
        reserved = 1_000_000 - int(_post(probe, "probe", max_tokens=60).headers["x-ratelimit-remaining-tokens"])
        probe.stop()
        # 5.5 reservations: exactly 5 fit, and the half left needs 5 s of refill (tpm/60 per second) to fit a 6th.
        next(t for t in tenants if t["name"] == "tpm")["limits"] = {"tpm": int(5.5 * reserved)}
        gateways = [Gateway(config=config, workdir=workdir).start() for _ in range(2)]
        time.sleep(0.6)  # a few heartbeats: each gateway counts the other
        try:
            yield Stack(gateways, sim, redis)
        finally:
            for gw in gateways:
                gw.stop()
            sim.stop()


def _body(max_tokens: int = 1, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _post(gw: Gateway, name: str, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        json=_body(**body),
        headers={"Authorization": f"Bearer {_key(name)}"},
        timeout=30,
    )


@dataclass
class Outcome:
    status: int
    headers: httpx.Headers
    text: str
    started: float  # when the response headers arrived

    def usage(self) -> dict[str, int]:
        return _usage(self.text)


def _usage(sse: str) -> dict[str, int]:
    """The usage chunk of a finished stream (the one just before `[DONE]`)."""
    events = [b[len("data: ") :] for b in sse.split("\n\n") if b.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage: dict[str, int] = json.loads(events[-2])["usage"]
    return usage


async def _burst(gateways: list[Gateway], name: str, count: int, **body: Any) -> tuple[list[Outcome], float]:
    """`count` concurrent clients, spread over the gateways; returns their outcomes and the time until the last
    response's headers arrived (an upper bound on when the last admission decision was taken)."""
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        start = time.monotonic()

        async def one(i: int) -> Outcome:
            gw = gateways[i % len(gateways)]
            headers = {"Authorization": f"Bearer {_key(name)}"}
            async with http.stream("POST", gw.url + "/v1/chat/completions", json=_body(**body), headers=headers) as r:
                started = time.monotonic() - start
                text = (await r.aread()).decode()
            return Outcome(r.status_code, r.headers, text, started)

        outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    return list(outcomes), max(o.started for o in outcomes)


def _assert_proper_429(o: Outcome, kind: str, limit: int, *, rate_headers: bool = True) -> None:
    assert o.status == 429, o.text
    error = json.loads(o.text)["error"]
    assert error["type"] == kind
    assert error["code"] == "rate_limit_exceeded"
    assert f"Limit {limit}," in error["message"]
    assert "Please try again in " in error["message"]
    wait_ms = int(o.headers["retry-after-ms"])
    assert wait_ms > 0
    assert int(o.headers["retry-after"]) == math.ceil(wait_ms / 1000)
    if rate_headers:  # a tenant limited only on concurrency has no bucket to report (OpenAI has no such header)
        assert o.headers[f"x-ratelimit-limit-{kind}"] == str(limit)
        parse_go_duration(o.headers[f"x-ratelimit-reset-{kind}"])


def test_rpm_is_exact_across_two_gateways_under_200_clients(stack: Stack) -> None:
    outcomes, span = asyncio.run(_burst(stack.gateways, "rpm", 200))
    admitted = [o for o in outcomes if o.status == 200]
    # rpm=20 refills one request every 3 s: only a burst slower than that may admit more.
    assert 20 <= len(admitted) <= 20 + int(span / 3), (len(admitted), span)
    if span < 3:
        assert sorted(int(o.headers["x-ratelimit-remaining-requests"]) for o in admitted) == list(range(20))
    for o in admitted:
        assert o.headers["x-ratelimit-limit-requests"] == "20"
    for o in outcomes:
        if o.status != 200:
            _assert_proper_429(o, "requests", 20)
            assert o.headers["x-ratelimit-remaining-requests"] == "0"


def test_tpm_is_exact_across_two_gateways_and_streams_settle_to_their_usage(stack: Stack) -> None:
    tpm = next(t for t in stack.gateways[0].config["tenants"] if t["name"] == "tpm")["limits"]["tpm"]
    reserved = int(tpm / 5.5)
    start = time.monotonic()
    # Streams of 60 tokens at 50 ms a token last 3 s: none settles (and refunds) while the burst is admitted.
    outcomes, span = asyncio.run(_burst(stack.gateways, "tpm", 200, max_tokens=60, stream=True, ignore_eos=True))
    admitted = [o for o in outcomes if o.status == 200]
    assert 5 <= len(admitted) <= 5 + int(span / 5), (len(admitted), span)
    for o in outcomes:
        if o.status != 200:
            _assert_proper_429(o, "tokens", tpm)
    used = sum(o.usage()["prompt_tokens"] + o.usage()["completion_tokens"] for o in admitted)
    assert used < len(admitted) * reserved  # the worker counts the prompt tighter than the gateway's estimate

    # Every stream has ended and settled: the bucket holds tpm - used (plus refill), not tpm - reserved.
    after = _post(stack.gateways[1], "tpm", max_tokens=60)
    assert after.status_code == 200
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    lowest = tpm - used - reserved
    assert lowest - 1 <= remaining <= lowest + math.ceil(tpm / 60 * (time.monotonic() - start)) + 1


def test_refund_of_a_stream_that_stops_before_its_budget(stack: Stack) -> None:
    gw = stack.gateways[0]
    tpm, rate = 6000, 6000 / 60
    start = time.monotonic()
    first = _post(gw, "natural", max_tokens=500, stream=True)  # ends at its natural length (8..64 tokens)
    reserved = tpm - int(first.headers["x-ratelimit-remaining-tokens"])
    usage = _usage(first.text)
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    assert used < reserved - 400

    second = _post(gw, "natural", max_tokens=500, stream=True)
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    lowest = tpm - used - reserved  # the first request charged what it used, not its 500-token budget
    assert lowest - 1 <= remaining <= lowest + math.ceil(rate * (time.monotonic() - start)) + 1


@contextmanager
def _streams(gateways: list[Gateway], name: str, n: int) -> Iterator[list[int]]:
    """Open `n` long streams (one at a time, spread over the gateways) and yield their statuses; leaving the block
    disconnects them all mid-stream."""
    with ExitStack() as stack:
        statuses: list[int] = []
        readers: list[Iterator[str]] = []
        for i in range(n):
            http = stack.enter_context(httpx.Client(timeout=30))
            resp = stack.enter_context(
                http.stream(
                    "POST",
                    gateways[i % len(gateways)].url + "/v1/chat/completions",
                    json=_body(max_tokens=200, stream=True, ignore_eos=True),  # 10 s at 50 ms a token
                    headers={"Authorization": f"Bearer {_key(name)}"},
                )
            )
            if resp.status_code == 200:
                lines = resp.iter_lines()
                next(lines)  # the first event: the request is running on the worker
                readers.append(lines)  # kept: a dropped iterator closes its response, i.e. disconnects
            statuses.append(resp.status_code)
        yield statuses


def _all_admitted(stack: Stack, name: str, n: int) -> bool:
    with _streams(stack.gateways, name, n) as statuses:
        return statuses == [200] * n


def test_max_concurrent_holds_and_slots_come_back_after_disconnects_and_failures(stack: Stack) -> None:
    # 40 concurrent streams of 2 s against max_concurrent=4: exactly 4 run.
    outcomes, _ = asyncio.run(_burst(stack.gateways, "conc", 40, max_tokens=40, stream=True, ignore_eos=True))
    assert sum(o.status == 200 for o in outcomes) == 4
    for o in outcomes:
        if o.status != 200:
            _assert_proper_429(o, "requests", 4, rate_headers=False)
            assert "concurrent requests" in json.loads(o.text)["error"]["message"]

    with _streams(stack.gateways, "conc", 5) as statuses:
        assert statuses == [200, 200, 200, 200, 429]
    # The four clients left mid-stream (their streams had 10 s to go): their slots come back.
    assert wait_until(lambda: _all_admitted(stack, "conc", 4), timeout=5)

    # A worker failing every attempt before the first byte, then one cutting streams mid-way: no slot is lost.
    stack.sim.faults(error_rate=1.0, error_status=500)
    try:
        for i in range(6):
            assert _post(stack.gateways[i % 2], "conc").status_code == 502
    finally:
        stack.sim.faults(error_rate=0.0)
    stack.sim.faults(drop_after_tokens=2)
    try:
        for i in range(6):
            r = _post(stack.gateways[i % 2], "conc", max_tokens=20, stream=True, ignore_eos=True)
            assert r.status_code == 200
            assert '"server_error"' in r.text
    finally:
        stack.sim.faults(drop_after_tokens=None)
    assert wait_until(lambda: _all_admitted(stack, "conc", 4), timeout=5)
    with _streams(stack.gateways, "conc", 5) as statuses:
        assert statuses == [200, 200, 200, 200, 429]


def test_headers_on_200_and_429_are_consistent(stack: Stack) -> None:
    gw = stack.gateways[0]
    seen = [_post(gw, "headers") for _ in range(3)]
    reserved = 60_000 - int(seen[0].headers["x-ratelimit-remaining-tokens"])
    for i, r in enumerate(seen, start=1):
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "60"
        assert r.headers["x-ratelimit-limit-tokens"] == "60000"
        assert r.headers["x-ratelimit-remaining-requests"] == str(60 - i)
        # Each request took a second's worth of requests (60 rpm); reset is the time to refill what is missing.
        assert i - 0.5 < parse_go_duration(r.headers["x-ratelimit-reset-requests"]) <= i
        tokens_reset = parse_go_duration(r.headers["x-ratelimit-reset-tokens"])
        assert tokens_reset <= i * reserved / 1000 + 0.001  # 60,000 tpm refills 1,000 tokens a second

    big = _post(gw, "headers", max_tokens=70_000)  # more than the whole bucket
    assert big.status_code == 429
    assert big.headers["x-should-retry"] == "false"
    assert "retry-after" not in big.headers
    assert int(big.headers["x-ratelimit-remaining-requests"]) >= 57  # a rejected request costs nothing
    assert "Request too large" in big.json()["error"]["message"]


def test_openai_sdk_honours_retry_after_and_x_should_retry(stack: Stack) -> None:
    gw = stack.gateways[1]
    outcomes, _ = asyncio.run(_burst([gw], "sdk", 20))
    assert sum(o.status == 200 for o in outcomes) == 12

    statuses: list[int] = []
    retry_counts: list[str] = []
    http = httpx.Client(
        event_hooks={
            "request": [lambda req: retry_counts.append(req.headers.get("x-stainless-retry-count", "0"))],
            "response": [lambda resp: statuses.append(resp.status_code)],
        }
    )
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=_key("sdk"), max_retries=3, http_client=http)
    try:
        # 12 rpm refills one request every 5 s: the SDK waits what retry-after-ms says and gets through.
        reply = sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=1)
        assert reply.choices
        assert statuses[0] == 429 and statuses[-1] == 200
        assert int(retry_counts[-1]) > 0

        statuses.clear()
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=200_000)
        assert statuses == [429]  # x-should-retry: false, so no retry
        assert caught.value.code == "rate_limit_exceeded"
    finally:
        sdk.close()
        http.close()


def test_redis_stopped_mid_run(tmp_path: Path) -> None:
    """fail_closed answers 503, fail_open admits this gateway's share (limit // 2), every request within the bound;
    Redis restarted on the same port is used again without restarting the gateways."""
    with RedisServer() as redis:
        sim = Sim(model=MODEL, max_context=300_000, args=["--itl-ms", "1"], workdir=tmp_path).start()
        tenants = _tenants(("open", {"rpm": 20}, "fail_open"), ("closed", {"rpm": 20}, "fail_closed"))
        config = _config(sim, redis.url, tenants, steady=False)
        gateways = [Gateway(config=config, workdir=tmp_path).start() for _ in range(2)]
        try:
            assert _post(gateways[0], "open").headers["x-ratelimit-limit-requests"] == "20"
            assert _post(gateways[1], "closed").status_code == 200
            time.sleep(0.6)  # heartbeats: each gateway has seen the other

            redis.stop()
            for gw in gateways:
                start = time.monotonic()
                r = _post(gw, "closed")
                assert time.monotonic() - start < BOUND_S
                assert r.status_code == 503
                assert r.json()["error"]["type"] == "server_error"
                assert r.headers["retry-after"] == "1"
            for gw in gateways:
                statuses = []
                for _ in range(12):
                    start = time.monotonic()
                    r = _post(gw, "open")
                    assert time.monotonic() - start < BOUND_S
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        assert r.headers["x-ratelimit-limit-requests"] == "10"  # this gateway's share
                    else:
                        assert r.json()["error"]["type"] == "requests"
                assert statuses == [200] * 10 + [429] * 2

            redis.start()  # same port, empty
            for gw in gateways:
                assert wait_until(lambda gw=gw: _post(gw, "closed").status_code == 200, timeout=10)
                r = _post(gw, "open")
                assert r.status_code == 200
                assert r.headers["x-ratelimit-limit-requests"] == "20"  # counted in Redis again
        finally:
            for gw in gateways:
                gw.stop()
            sim.stop()
