"""The agent endpoints in process: the gateway's ASGI app over simulated workers (tests/gateway/support.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from sparsegate.gateway.settings import hash_api_key
from tests.gateway.support import KEY, MODEL, running

AUTH = {"authorization": f"Bearer {KEY}"}
OTHER_KEY = "sk-other-0123456789abcdef"
OTHER = {"name": "globex", "api_keys": [hash_api_key(OTHER_KEY)], "models": ["*"]}


def events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    out: list[tuple[str | None, dict[str, Any]]] = []
    for block in text.split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            out.append((name, json.loads(data)))
    return out


async def test_responses_whole_settles_from_its_usage_and_follows_up_on_its_worker() -> None:
    async with running(sims=2) as gw:
        first = await gw.client.post(
            "/v1/responses", json={"model": MODEL, "input": "Hello", "max_output_tokens": 6}, headers=AUTH
        )
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["id"].startswith("resp_") and body["usage"]["output_tokens"] == 6
        record = gw.records[-1]
        assert (record.endpoint, record.completion_tokens, record.prompt_tokens) == (
            "responses",
            6,
            body["usage"]["input_tokens"],
        )
        assert "x-ratelimit-limit-requests" not in first.headers or first.headers["x-ratelimit-limit-requests"]
        holder = record.worker
        for _ in range(3):  # every follow-up goes to the worker that holds the response, never elsewhere
            follow = await gw.client.post(
                "/v1/responses",
                json={"model": MODEL, "input": "more", "previous_response_id": body["id"], "max_output_tokens": 2},
                headers=AUTH,
            )
            assert follow.status_code == 200, follow.text
            assert gw.records[-1].worker == holder
        got = await gw.client.get(f"/v1/responses/{body['id']}", headers=AUTH)
        assert got.status_code == 200 and got.json()["id"] == body["id"] and gw.records[-1].worker == holder


async def test_another_tenants_response_is_404_everywhere() -> None:
    async with running(extra_tenants=[OTHER]) as gw:
        mine = (await gw.client.post("/v1/responses", json={"model": MODEL, "input": "x"}, headers=AUTH)).json()
        theirs = {"authorization": f"Bearer {OTHER_KEY}"}
        for method, path, body in (
            ("GET", f"/v1/responses/{mine['id']}", None),
            ("POST", f"/v1/responses/{mine['id']}/cancel", None),
            ("POST", "/v1/responses", {"model": MODEL, "input": "y", "previous_response_id": mine["id"]}),
        ):
            answer = await gw.client.request(method, path, json=body, headers=theirs)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
            assert "sim-" not in answer.text  # no internal host names
        unknown = await gw.client.get("/v1/responses/resp_doesnotexist", headers=AUTH)
        assert unknown.status_code == 404


async def test_responses_stream_relays_typed_events_unchanged_and_settles() -> None:
    async with running() as gw:
        answer = await gw.client.post(
            "/v1/responses",
            json={"model": MODEL, "input": "Hi", "stream": True, "max_output_tokens": 4},
            headers=AUTH,
        )
        got = events(answer.text)
        assert [n for n, _ in got][:2] == ["response.created", "response.in_progress"]
        assert got[-1][0] == "response.incomplete" and "[DONE]" not in answer.text
        assert all(n == d["type"] for n, d in got)
        record = gw.records[-1]
        assert record.outcome == "ok" and record.completion_tokens == 4 and record.usage_from_worker


async def test_messages_anthropic_envelope_headers_and_stream() -> None:
    async with running(tenant={"limits": {"rpm": 100}}) as gw:
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        body = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
        whole = await gw.client.post("/v1/messages", json=body, headers=headers)
        assert whole.status_code == 200 and whole.json()["usage"]["output_tokens"] == 3
        assert whole.headers["anthropic-ratelimit-requests-limit"] == "100"
        streamed = await gw.client.post("/v1/messages", json={**body, "stream": True}, headers=headers)
        names = [n for n, _ in events(streamed.text)]
        assert names[0] == "message_start" and names[-1] == "message_stop"
        assert gw.records[-1].completion_tokens == 3
        bad = await gw.client.post("/v1/messages", json={"model": MODEL}, headers=headers)
        assert bad.status_code == 400 and bad.json()["type"] == "error"
        assert bad.json()["error"]["type"] == "invalid_request_error"
        unauthorized = await gw.client.post("/v1/messages", json=body, headers={"x-api-key": "nope"})
        assert unauthorized.status_code == 401 and unauthorized.json()["error"]["type"] == "authentication_error"
        counted = await gw.client.post(
            "/v1/messages/count_tokens", json={k: body[k] for k in ("model", "messages")}, headers=headers
        )
        assert counted.json()["input_tokens"] == whole.json()["usage"]["input_tokens"]


def cut_stream(*events: tuple[str, dict[str, Any]]) -> Any:
    """A worker that sends these typed events, then loses the connection."""

    async def handler(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for name, data in events:
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            raise httpx.ReadError("connection reset", request=request)

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return handler


async def test_worker_failure_mid_stream_becomes_the_apis_error_events() -> None:
    created = {"id": "resp_x", "object": "response", "created_at": 1, "status": "in_progress", "model": MODEL}
    created |= {"output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    responses = cut_stream(
        ("response.created", {"type": "response.created", "sequence_number": 0, "response": created}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1, "delta": "a"}),
    )
    async with running(sims=0, mocks={"w": responses}) as gw:
        answer = await gw.client.post(
            "/v1/responses", json={"model": MODEL, "input": "Hi", "stream": True}, headers=AUTH
        )
        got = events(answer.text)
        assert [n for n, _ in got] == ["response.created", "response.output_text.delta", "error", "response.failed"]
        assert [d["sequence_number"] for _, d in got] == [0, 1, 2, 3]
        assert got[-1][1]["response"]["status"] == "failed" and "w:" not in answer.text
        assert gw.records[-1].outcome == "error" and gw.records[-1].completion_tokens == 1
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 0}}}
    messages = cut_stream(("message_start", start))
    async with running(sims=0, mocks={"w": messages}) as gw:
        answer = await gw.client.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": KEY},
        )
        got = events(answer.text)
        assert [n for n, _ in got] == ["message_start", "error", "message_stop"]
        assert got[1][1]["error"]["type"] == "api_error"


async def test_embeddings_charge_input_and_tokenize_passes_through() -> None:
    async with running() as gw:
        answer = await gw.client.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "bb"]}, headers=AUTH)
        assert answer.status_code == 200 and len(answer.json()["data"]) == 2
        record = gw.records[-1]
        assert record.prompt_tokens == answer.json()["usage"]["prompt_tokens"] and record.completion_tokens == 0
        tok = await gw.client.post("/v1/tokenize", json={"model": MODEL, "prompt": "hello"}, headers=AUTH)
        assert tok.status_code == 200 and tok.json()["count"] == 3
        back = await gw.client.post(
            "/v1/detokenize", json={"model": MODEL, "tokens": tok.json()["tokens"]}, headers=AUTH
        )
        assert back.json()["text"] == "hello"
        unknown = await gw.client.post("/v1/embeddings", json={"model": "nope", "input": "a"}, headers=AUTH)
        assert unknown.status_code == 404


async def test_background_response_is_cancelled_on_its_worker() -> None:
    async with running(sims=2, extra_tenants=[OTHER]) as gw:
        started = await gw.client.post(
            "/v1/responses",
            json={"model": MODEL, "input": "long", "background": True, "max_output_tokens": 3000},
            headers=AUTH,
        )
        assert started.status_code == 200 and started.json()["status"] == "queued"
        rid, holder = started.json()["id"], gw.records[-1].worker
        cancelled = await gw.client.post(f"/v1/responses/{rid}/cancel", headers=AUTH)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert gw.records[-1].worker == holder and gw.records[-1].endpoint == "responses_cancel"
        stats = await gw.sim_stats(holder.removeprefix("http://"))
        assert rid not in stats["rids_active"]


async def test_wrong_method_on_messages_answers_in_anthropics_envelope() -> None:
    async with running() as gw:
        answer = await gw.client.get("/v1/messages", headers={"x-api-key": KEY})
        assert answer.status_code == 405
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"


async def test_long_english_lands_on_the_pool_its_real_count_fits() -> None:
    # No tokenizer file: ~60 KB of English estimates at ~60K tokens (over the 32K pool), really ~15K.
    pools = [
        {"name": "small", "model": MODEL, "max_context": 32_768, "workers": ["http://sim-0"]},
        {"name": "large", "model": MODEL, "max_context": 131_072, "workers": ["http://sim-1"]},
    ]
    english = "The committee agreed to continue the review of the proposal next quarter. " * 800
    async with running(sims=2, pools=pools, sim_overrides={"max_context": 131_072}) as gw:
        answer = await gw.client.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": english}]},
            headers={"x-api-key": KEY},
        )
        assert answer.status_code == 200, answer.text
        record = gw.records[-1]
        assert record.pool == "small" and 14_000 < record.prompt_tokens < 16_000
        answer = await gw.client.post(
            "/v1/responses", json={"model": MODEL, "input": english * 3, "max_output_tokens": 16}, headers=AUTH
        )
        assert answer.status_code == 200 and gw.records[-1].pool == "large"
