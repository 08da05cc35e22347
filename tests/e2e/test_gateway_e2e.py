"""The gateway core end to end: uvicorn on a real socket, sim workers as processes, the official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.harness import KEY_ACME, MODEL, Gateway, Sim, stream_then_leave, tenant, wait_until


def _config(sim: Sim) -> dict[str, Any]:
    return {
        "tenants": [tenant("acme", KEY_ACME, limits={"rpm": 10_000, "tpm": 10_000_000})],
        "pools": [{"name": "short", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
        "max_request_bytes": 64 * 1024,
    }


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    # One gateway and one sim for the module: starting processes dominates these tests' time.
    workdir = tmp_path_factory.mktemp("core")
    sim = Sim(model=MODEL, max_context=32_768, args=["--itl-ms", "2"], workdir=workdir).start()
    gw = Gateway(config=_config(sim), workdir=workdir).start()
    yield gw, sim
    gw.stop()
    sim.stop()


@pytest.fixture
def stack(shared_stack: tuple[Gateway, Sim]) -> tuple[Gateway, Sim]:
    _, sim = shared_stack
    # a previous test's aborted request may still be winding down on the sim
    assert wait_until(lambda: sim.stats()["active"] == 0, timeout=5)
    sim.faults(error_rate=0.0, stall_ms=0.0, drop_after_tokens=None, unhealthy=False)
    sim.reset()
    return shared_stack


_open_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


def client(gw: Gateway, key: str = KEY_ACME, **kw: Any) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, **kw)
    _open_clients.append(c)
    return c


def sse_events(body: str) -> list[str]:
    return [block[len("data: ") :] for block in body.split("\n\n") if block.startswith("data: ")]


HELLO = [{"role": "user", "content": "Hello there"}]


def test_non_stream_chat(stack: tuple[Gateway, Sim]) -> None:
    gw, sim = stack
    raw = client(gw).chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=12)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens <= 12
    assert raw.headers["x-request-id"]
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    assert "gateway;dur=" in raw.headers["server-timing"]
    stats = sim.stats()
    assert stats["recent"][-1]["rid"] == completion.id, "the gateway-minted rid is the worker's id, and the response id"
    assert stats["aborted"] == 0, "a finished request is never aborted"


def test_stream_chat_with_usage(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    chunks = list(
        client(gw).chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == sum(1 for c in chunks[:-1] if c.choices and c.choices[0].delta.content)
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[-2].choices[0].finish_reason in ("length", "stop")


def test_stream_chat_without_usage_strips_the_usage_chunk(stack: tuple[Gateway, Sim]) -> None:
    gw, sim = stack
    chunks = list(client(gw).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, stream=True))
    assert chunks and all(c.choices for c in chunks), "no usage-only chunk when the client did not ask"
    assert all(c.usage is None for c in chunks)
    # ... but the gateway asked the worker for it, to settle token limits.
    assert sim.stats()["recent"][-1]["completion_tokens"] == 8
    assert sim.stats()["aborted"] == 0, "a stream read to the end is never aborted"


def test_stream_wire_format(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_ACME}"}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        text = resp.read().decode()
    events = sse_events(text)
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


async def test_async_client_stream_and_non_stream(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    aclient = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY_ACME, max_retries=0)
    async with aclient:
        done = await aclient.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert done.choices[0].message.content
        text = ""
        stream = await aclient.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, stream=True)
        async for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        assert text.strip()


def test_completions_endpoint(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    c = client(gw)
    done = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    assert done.choices[0].text and done.usage is not None
    parts = list(c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices).strip()


def test_wrong_key_is_401_without_echoing_the_key(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    wrong = "sk-wrong-key-1234567890abcdef"
    with pytest.raises(openai.AuthenticationError) as info:
        client(gw, key=wrong).chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert wrong not in info.value.message
    resp = httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(stack: tuple[Gateway, Sim]) -> None:
    gw, sim = stack
    with pytest.raises(openai.NotFoundError) as info:
        client(gw).chat.completions.create(model="no-such-model", messages=HELLO)
    assert info.value.code == "model_not_found"
    assert sim.stats()["received"] == 0


def test_models_endpoints(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    c = client(gw)
    models = c.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra == {"max_model_len": 32_768}
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (json.dumps({"model": MODEL}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": "hi"}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": "many"}).encode(), "max_tokens"),
        (json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": -3}).encode(), "max_tokens"),
        (json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}).encode(), "messages"),
        (json.dumps({"model": 7, "messages": HELLO}).encode(), "model"),
        (json.dumps({"model": MODEL, "messages": HELLO, "stream": "yes please"}).encode(), "stream"),
        (json.dumps({"model": MODEL, "messages": HELLO, "temperature": 9}).encode(), "temperature"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "empty",
        "no-messages",
        "messages-str",
        "max-tokens-str",
        "max-tokens-neg",
        "bad-role",
        "model-int",
        "stream-str",
        "temperature-9",
    ],
)
def test_malformed_bodies_are_400_never_500(stack: tuple[Gateway, Sim], body: bytes, param: str | None) -> None:
    gw, sim = stack
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {KEY_ACME}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert sim.stats()["received"] == 0


def test_sdk_sees_bad_request_error(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    with pytest.raises(openai.BadRequestError):
        client(gw).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=-1)


def test_body_over_the_limit_is_413(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    big = [{"role": "user", "content": "x" * (70 * 1024)}]
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": big},
        headers={"Authorization": f"Bearer {KEY_ACME}"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_context_length_exceeded(stack: tuple[Gateway, Sim]) -> None:
    gw, sim = stack
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=40_000)
    assert info.value.code == "context_length_exceeded"
    assert "32768" in info.value.message and "40000" in info.value.message
    assert sim.stats()["received"] == 0


def test_mid_stream_worker_failure_raises_api_error(stack: tuple[Gateway, Sim]) -> None:
    gw, sim = stack
    sim.faults(drop_after_tokens=3)
    received: list[str] = []

    def consume() -> None:
        for chunk in client(gw).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError):
        consume()
    assert 1 <= len(received) <= 3
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 20, "stream": True}
    resp = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_ACME}"})
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert json.loads(events[-2])["error"]["type"] == "server_error"


def test_client_disconnect_aborts_on_the_worker(stack: tuple[Gateway, Sim]) -> None:
    gw, sim = stack
    stream_then_leave(gw, {"model": MODEL, "messages": HELLO, "max_tokens": 5000, "ignore_eos": True, "stream": True})
    assert wait_until(lambda: sim.stats()["aborted"] == 1, timeout=5)
    assert sim.stats()["active"] == 0


def test_non_stream_disconnect_aborts_too(stack: tuple[Gateway, Sim]) -> None:
    gw, sim = stack
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 5000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_ACME}"}, timeout=0.5
        )
    assert wait_until(lambda: sim.stats()["aborted"] == 1, timeout=5)


def test_unknown_route_and_method_use_the_envelope(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    resp = httpx.get(gw.url + "/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["message"]
    resp = httpx.get(gw.url + "/v1/chat/completions")
    assert resp.status_code == 405 and "error" in resp.json()


def test_health_and_docs(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    assert httpx.get(gw.url + "/health/live").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["pools"]["short"]["healthy"] == 1
    assert httpx.get(gw.url + "/docs").status_code == 200
    spec = httpx.get(gw.url + "/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]


def test_request_log_has_no_secrets(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    gw = gateways(_config(sims(max_context=32_768)))
    secret_prompt = "my-secret-prompt-text-42"
    client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": secret_prompt}])
    with pytest.raises(openai.AuthenticationError):
        client(gw, key="sk-leaky-key-abcdef123456").chat.completions.create(model=MODEL, messages=HELLO)
    out = gw.stop()
    # every line is JSON now (issue 12); the request lines are the ones with event=request
    every = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    lines = [line for line in every if line.get("event") == "request"]
    assert any(line["status"] == 200 and line["tenant"] == "acme" for line in lines)
    assert any(line["status"] == 401 for line in lines)
    assert secret_prompt not in out and KEY_ACME not in out and "sk-leaky-key-abcdef123456" not in out


def test_worker_errors_and_timeouts_map_to_5xx(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    sim = sims(max_context=32_768)
    config = _config(sim) | {"timeouts": {"first_byte_s": 0.5, "total_s": 0.8}, "retries": {"max_attempts": 1}}
    gw = gateways(config)
    c = client(gw)
    sim.faults(error_rate=1.0, error_status=500)
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 502
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "server_error"
    sim.faults(error_rate=0.0, stall_ms=3000)
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 504
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    assert info.value.status_code == 504
    # A timed-out attempt may still be running on the worker: the gateway tells it to stop.
    assert wait_until(lambda: sim.stats()["aborted"] == 2, timeout=5)


def test_a_stream_stalling_mid_way_ends_with_an_error_and_an_abort(
    sims: Callable[..., Sim], gateways: Callable[..., Gateway]
) -> None:
    sim = sims(max_context=32_768, args=["--itl-ms", "3000"])
    gw = gateways(_config(sim) | {"timeouts": {"read_s": 0.5}})
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 50, "ignore_eos": True, "stream": True}
    resp = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_ACME}"})
    events = sse_events(resp.text)
    assert resp.status_code == 200 and events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert json.loads(events[-2])["error"]["type"] == "server_error"
    # The worker is still generating: the gateway tells it to stop rather than wait for it to notice.
    assert wait_until(lambda: sim.stats()["aborted"] == 1, timeout=5)


def test_oversized_headers_get_431_in_the_envelope(stack: tuple[Gateway, Sim]) -> None:
    gw, _ = stack
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"Authorization": f"Bearer {KEY_ACME}", **{f"x-pad-{i}": "p" * 8000 for i in range(10)}},
    )
    assert resp.status_code == 431, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error" and resp.headers["x-request-id"]
    ok = httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2},
                    headers={"Authorization": f"Bearer {KEY_ACME}"})  # fmt: skip
    assert ok.status_code == 200
