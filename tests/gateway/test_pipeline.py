"""The request path in process: answers, the strict-input matrix, blame, shedding and disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import orjson
import pytest

from sparsegate.gateway.wire import Message
from tests.gateway.support import KEY, chat, running


def sse_data(text: str) -> list[str]:
    return [block[len("data: ") :] for block in text.split("\n\n") if block.startswith("data: ")]


async def test_non_stream_and_stream_answers() -> None:
    async with running() as gw:
        resp = await gw.chat(chat(), **{"x-request-id": "mine-1"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 8
        assert resp.headers["x-request-id"] == "mine-1"
        assert body["id"].startswith("chatcmpl-")
        resp = await gw.chat(chat(stream=True))
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_data(resp.text)
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        assert all(json.loads(e).get("usage") is None for e in events[:-1]), "usage is dropped when not asked for"


GOOD = b'{"model": "glm-5.1", "messages": [{"role": "user", "content": "hi"}]'
BAD_BODIES: dict[str, bytes] = {
    "lone-surrogate": b'{"model": "glm-5.1", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "invalid-utf8": b'{"model": "glm-5.1", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "deep-nesting": GOOD + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "huge-int": GOOD + b', "max_tokens": 1' + b"0" * 400 + b"}",
    "huge-float": GOOD + b', "temperature": 1e999}',
    "max-tokens-string": GOOD + b', "max_tokens": "16"}',
    "stream-string": GOOD + b', "stream": "yes"}',
    "n-float": GOOD + b', "n": 1.5}',
    "temperature-string": GOOD + b', "temperature": "0.5"}',
    "not-an-object": b"[1, 2]",
    "empty": b"",
    "truncated": GOOD,
    "content-number": b'{"model": "glm-5.1", "messages": [{"role": "user", "content": 5}]}',
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
async def test_bad_bytes_get_400_in_the_envelope_and_move_no_breaker(name: str) -> None:
    async with running() as gw:
        resp = await gw.chat(BAD_BODIES[name])
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"]
        assert resp.headers["x-request-id"]
        assert set(gw.breaker_failures().values()) == {0}
        assert (await gw.chat(chat())).status_code == 200


async def test_ten_lone_surrogates_then_a_normal_request() -> None:
    async with running(sims=2) as gw:
        for _ in range(10):
            resp = await gw.chat(BAD_BODIES["lone-surrogate"])
            assert resp.status_code == 400
        assert set(gw.breaker_states().values()) == {"closed"}
        assert set(gw.breaker_failures().values()) == {0}
        for host in gw.sims:
            assert not (await gw.sim_stats(host))["recent"], "nothing reached a worker"
        assert (await gw.chat(chat())).status_code == 200


async def _busy(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(200 if request.url.path.startswith("/health") else 404)
    return httpx.Response(429, json={"error": {"message": "queue full"}}, headers={"retry-after": "3"})


async def _broken(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(200 if request.url.path.startswith("/health") else 404)
    return httpx.Response(500, json={"error": {"message": "boom"}})


async def test_worker_429_is_a_429_with_its_wait_and_no_breaker_failure() -> None:
    async with running(sims=0, mocks={"busy": _busy}, health={"failure_threshold": 1}) as gw:
        resp = await gw.chat(chat())
        assert resp.status_code == 429, resp.text
        assert resp.headers["retry-after"] == "3" and resp.headers["retry-after-ms"] == "3000"
        assert gw.breaker_states() == {"http://busy": "closed"}


async def test_worker_500_is_a_502_and_counts_against_that_worker() -> None:
    async with running(sims=0, mocks={"broken": _broken}, health={"failure_threshold": 1}) as gw:
        resp = await gw.chat(chat())
        assert resp.status_code == 502, resp.text
        assert gw.breaker_states() == {"http://broken": "open"}


async def test_refused_connect_is_retried_on_another_worker() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200 if request.url.path.startswith("/health") else 404)
        raise httpx.ConnectError("refused", request=request)

    async with running(sims=1, mocks={"down": refuse}, health={"probe_interval_s": 60}) as gw:
        for _ in range(4):
            assert (await gw.chat(chat())).status_code == 200
        assert gw.breaker_failures()["http://sim-0"] == 0


async def test_shed_beyond_max_in_flight_before_admission() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200 if request.url.path.startswith("/health") else 404)
        entered.set()
        await release.wait()
        return httpx.Response(
            200, json={"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        )

    async with running(
        sims=0, mocks={"slow": slow}, overload={"max_in_flight": 1}, tenant={"limits": {"rpm": 100}}
    ) as gw:
        first = asyncio.create_task(gw.chat(chat()))
        await entered.wait()
        shed = await gw.chat(chat())
        assert shed.status_code == 503, shed.text
        assert shed.json()["error"]["type"] == "server_error"
        assert int(shed.headers["retry-after"]) >= 1 and int(shed.headers["retry-after-ms"]) > 0
        assert "x-ratelimit-remaining-requests" not in shed.headers, "shed before admission: nothing charged"
        release.set()
        ok = await first
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-remaining-requests"] == "99"
        assert gw.state.shedder.in_flight == 0


async def test_client_leaving_mid_stream_aborts_on_the_worker_and_charges_what_was_delivered() -> None:
    aborted: list[str] = []
    delivered = 3

    async def worker(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200 if request.url.path.startswith("/health") else 404)
        if request.url.path == "/abort_request":
            aborted.append(orjson.loads(request.content)["rid"])
            return httpx.Response(200, json={})
        rid = orjson.loads(request.content)["rid"]

        async def events() -> Any:
            for i in range(1000):
                chunk = {"id": rid, "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                await asyncio.sleep(0)

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    async with running(sims=0, mocks={"w": worker}, tenant={"limits": {"tpm": 1_000_000}}) as gw:
        body = orjson.dumps({**chat(stream=True), "max_tokens": 2000})
        sent: list[Message] = []
        gone = asyncio.Event()
        body_done = False

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                body_done = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and len(sent) == 1 + delivered:
                gone.set()

        scope = {
            "type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
            "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
        }  # fmt: skip
        await gw.app(scope, receive, send)
        await asyncio.gather(*gw.state.background)
        assert aborted and aborted[0].startswith("chatcmpl-"), "the worker is told to abort the live rid"
        assert not any(m.get("more_body") is False for m in sent[1:]), "nothing more is written to a gone client"
        events = sum(m["body"].count(b"data: ") for m in sent[1:])
        record = gw.records[-1]
        assert record.outcome == "cancelled" and record.status == 200
        # charged for what the client got (at most one read more was in flight), not the 2000 reserved
        assert delivered <= record.completion_tokens <= events + 1
        assert [w.in_flight for w in gw.state.router.workers()] == [0]
