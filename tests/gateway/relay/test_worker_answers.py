"""The relay against SGLang 0.5.23's behaviour (the sim in process, or a mocked worker): n > 1 ids and aborts,
worker aborts and error events, worker statuses, and no internal host in anything a client reads."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson

from tests.gateway.support import KEY, chat, running


def sse_data(text: str) -> list[str]:
    return [block[len("data: ") :] for block in text.split("\n\n") if block.startswith("data: ")]


async def set_faults(gw: Any, host: str, **faults: Any) -> None:
    async with httpx.AsyncClient(transport=gw.workers, base_url=f"http://{host}") as client:
        assert (await client.post("/sim/faults", json=faults)).status_code == 200


async def test_n2_streams_and_bodies_carry_one_id() -> None:
    async with running() as gw:
        resp = await gw.chat(chat(n=2, stream=True, stream_options={"include_usage": True}))
        assert resp.status_code == 200, resp.text
        data = sse_data(resp.text)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert {c["id"] for c in chunks} == {gw.records[-1].rid}
        assert {ch["index"] for c in chunks for ch in c["choices"]} == {0, 1}
        assert chunks[-1]["usage"]["completion_tokens"] > 0 and "completion_tokens_details" not in chunks[-1]["usage"]

        body = (await gw.chat(chat(n=2))).json()
        assert body["id"] == gw.records[-1].rid and not body["id"].endswith(("_0", "_1"))
        assert [c["index"] for c in body["choices"]] == [0, 1]


async def test_n2_cut_short_aborts_every_sample_rid() -> None:
    aborted: list[str] = []

    async def worker(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200 if request.url.path.startswith("/health") else 404)
        if request.url.path == "/abort_request":
            aborted.append(orjson.loads(request.content)["rid"])
            return httpx.Response(200)
        rid = orjson.loads(request.content)["rid"]
        chunk = {"id": f"{rid}_1", "choices": [{"index": 1, "delta": {"content": "a"}, "finish_reason": None}]}

        async def events() -> Any:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"  # then the connection ends, the answer unfinished

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    async with running(sims=0, mocks={"w": worker}) as gw:
        resp = await gw.chat(chat(n=2, stream=True))
        data = sse_data(resp.text)
        assert json.loads(data[0])["id"] == gw.records[-1].rid
        assert "error" in json.loads(data[-2]) and data[-1] == "[DONE]"
        for task in list(gw.state.background):
            await task
        rid = gw.records[-1].rid
        assert sorted(aborted) == [f"{rid}_0", f"{rid}_1"], "the base rid matches nothing on SGLang"


async def test_a_worker_abort_is_an_error_charged_what_the_worker_reported() -> None:
    async with running(tenant={"limits": {"tpm": 100_000}}) as gw:
        await set_faults(gw, "sim-0", abort_after_tokens=2)
        resp = await gw.chat(chat(stream=True, max_tokens=32))
        data = sse_data(resp.text)
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert error["type"] == "server_error" and error["code"] is None
        assert not any('"abort"' in d for d in data), "SGLang's finish reason is not OpenAI's"
        record = gw.records[-1]
        assert record.outcome == "error" and record.error_type == "UpstreamAborted"
        assert record.usage_from_worker and record.completion_tokens == 2

        whole = await gw.chat(chat(max_tokens=32))
        assert whole.status_code == 502, whole.text
        assert whole.json()["error"]["type"] == "server_error"
        record = gw.records[-1]
        assert record.outcome == "error" and record.completion_tokens == 2
        # settling charges the record's prompt + completion tokens: the 2 the worker reported, not the 32 reserved
        assert record.usage_from_worker


async def test_a_worker_error_event_is_rewritten() -> None:
    async with running() as gw:
        await set_faults(gw, "sim-0", abort_after_tokens=1, abort_status=503)
        resp = await gw.chat(chat(stream=True, max_tokens=32, stream_options={"include_usage": True}))
        data = sse_data(resp.text)
        assert data[-1] == "[DONE]" and sum('"error"' in d for d in data) == 1
        error = json.loads(data[-2])["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "server_error" and error["code"] is None
        assert gw.records[-1].error_type == "UpstreamStreamError"


async def test_worker_4xx_is_400_and_503_is_retried_elsewhere() -> None:
    async with running(sims=2, health={"probe_interval_s": 60}) as gw:
        await set_faults(gw, "sim-0", error_rate=1.0, error_status=422)
        await set_faults(gw, "sim-1", error_rate=1.0, error_status=422)
        bad = await gw.chat(chat())
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["type"] == "invalid_request_error"

        await set_faults(gw, "sim-0", error_rate=1.0, error_status=503)
        await set_faults(gw, "sim-1", error_rate=0.0)
        for _ in range(4):
            assert (await gw.chat(chat())).status_code == 200
        await set_faults(gw, "sim-1", error_rate=1.0, error_status=503)
        down = await gw.chat(chat())
        assert down.status_code == 503, down.text
        assert down.json()["error"]["type"] == "server_error" and int(down.headers["retry-after"]) >= 1
        assert gw.records[-1].error_type == "UpstreamNotReady"


async def test_no_worker_url_reaches_a_client() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200 if request.url.path.startswith("/health") else 404)
        raise httpx.ConnectError("refused", request=request)

    async def broken(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200 if request.url.path.startswith("/health") else 404)
        return httpx.Response(500, json={"object": "error", "message": "worker-3.internal:30000 died", "code": 500})

    for name, handler in (("worker-7.pool.internal", refuse), ("worker-3.internal", broken)):
        async with running(sims=0, mocks={name: handler}) as gw:
            for stream in (False, True):
                resp = await gw.chat(chat(stream=stream))
                assert resp.status_code >= 500
                seen = resp.text + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
                assert name not in seen and "http://" not in seen, seen
                assert gw.records[-1].worker == f"http://{name}", "the logs keep it"


async def test_a_completions_batch_carries_one_id() -> None:
    body = {"model": "glm-5.1", "prompt": ["Once upon", "a time"], "max_tokens": 6, "n": 2}
    headers = {"authorization": f"Bearer {KEY}"}
    async with running() as gw:
        whole = await gw.client.post("/v1/completions", json=body, headers=headers)
        assert whole.status_code == 200, whole.text
        assert whole.json()["id"] == gw.records[-1].rid == gw.records[-1].response_id
        assert sorted(c["index"] for c in whole.json()["choices"]) == [0, 1, 2, 3]

        resp = await gw.client.post("/v1/completions", json={**body, "stream": True}, headers=headers)
        data = sse_data(resp.text)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert {c["id"] for c in chunks} == {gw.records[-1].rid}
        assert {ch["index"] for c in chunks for ch in c["choices"]} == {0, 1, 2, 3}
        assert gw.records[-1].outcome == "ok" and len(gw.records[-1].finish_reasons) == 4
