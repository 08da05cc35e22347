"""Exact counts from a worker's /v1/tokenize when no tokenizer file is configured (the sim as the worker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sparsegate.backends.sim import SimConfig, SimState, create_app
from sparsegate.gateway.routing import Router
from sparsegate.gateway.routing.remote_count import WorkerTokenCounter
from sparsegate.gateway.routing.tokens import TokenCounter

from .factories import make_settings, tenant_of

ENGLISH = "The committee reviewed the proposal and agreed to continue the work next quarter. " * 50


@pytest.fixture
async def sim_http() -> AsyncIterator[httpx.AsyncClient]:
    state = SimState.build(SimConfig(model="m", max_context=1_000_000))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state.config, state=state))) as client:
        yield client
    await state.aclose()


async def sim_prompt_tokens(http: httpx.AsyncClient, messages: list[dict[str, Any]]) -> int:
    body = {"messages": messages, "max_tokens": 1}
    usage: int = (await http.post("http://w/v1/chat/completions", json=body)).json()["usage"]["prompt_tokens"]
    return usage


async def test_counts_are_a_close_upper_bound_and_the_estimate_is_not(sim_http: httpx.AsyncClient) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ENGLISH}]
    counter = WorkerTokenCounter(sim_http)
    counted = await counter.count(["http://w"], "m", messages=messages)
    real = await sim_prompt_tokens(sim_http, messages)
    estimate = TokenCounter(None).count(messages=messages)
    assert counted is not None
    assert real <= counted <= real + 4 * len(messages)  # the estimate's framing, never below the real count
    assert estimate > 3 * real


async def test_history_is_counted_once(sim_http: httpx.AsyncClient) -> None:
    counter = WorkerTokenCounter(sim_http)
    history = [{"role": "user", "content": ENGLISH}, {"role": "assistant", "content": "Noted. " * 30}]
    await counter.count(["http://w"], "m", messages=history)
    asked = counter.asked_texts
    turn = [*history, {"role": "user", "content": "And then?"}]
    await counter.count(["http://w"], "m", messages=turn)
    assert counter.asked_texts == asked + 1  # only the new turn went to the worker
    other_model = await counter.count(["http://w"], "other", messages=turn)
    assert other_model is not None and counter.asked_texts == asked + 4  # the cache is per model


async def test_cache_is_bounded(sim_http: httpx.AsyncClient) -> None:
    counter = WorkerTokenCounter(sim_http, max_entries=3)
    for n in range(5):
        await counter.count(["http://w"], "m", messages=[{"role": "user", "content": f"turn {n}"}])
    assert len(counter) == 3


async def test_completions_prompts_and_tools_are_counted_too(sim_http: httpx.AsyncClient) -> None:
    counter = WorkerTokenCounter(sim_http)
    counted = await counter.count(["http://w"], "m", prompt=ENGLISH)
    assert counted == -(-len(ENGLISH) // 4) + 1
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with_tools = await counter.count(["http://w"], "m", messages=[{"role": "user", "content": "x"}], tools=tools)
    without = await counter.count(["http://w"], "m", messages=[{"role": "user", "content": "x"}])
    assert with_tools is not None and without is not None and with_tools > without


async def test_no_worker_answering_gives_none_and_the_next_worker_is_tried(sim_http: httpx.AsyncClient) -> None:
    async def workers(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "busy":
            return httpx.Response(503, json={"message": "busy"})
        answer = await sim_http.post("http://w/v1/tokenize", content=request.content)
        return httpx.Response(answer.status_code, content=answer.content)

    async with httpx.AsyncClient(transport=httpx.MockTransport(workers)) as http:
        counter = WorkerTokenCounter(http)
        assert await counter.count(["http://down", "http://busy"], "m", prompt="hi") is None
        assert await counter.count(["http://down", "http://busy", "http://ok"], "m", prompt="hi") == 2


async def test_router_asks_a_worker_only_when_the_estimate_leaves_the_smallest_pool(
    sim_http: httpx.AsyncClient,
) -> None:
    # ~20 KB of English: the byte estimate (~20K) overflows an 8K pool; the real count (~5K) fits it.
    settings = make_settings()
    router = Router(settings, sim_http)
    acme = tenant_of(settings)
    long_chat = [{"role": "user", "content": ENGLISH * 5}]
    estimate = router.count_prompt_tokens("glm", messages=long_chat)
    assert router.plan(acme, "glm", estimate, 1024).pool.name == "long"
    counted = await router.count_for_plan(acme, "glm", 1024, messages=long_chat)
    assert counted < 8192 - 1024 < estimate
    assert router.plan(acme, "glm", counted, 1024).pool.name == "short"
    asked = router.remote_counts.asked_texts
    short_chat = [{"role": "user", "content": "hello"}]
    assert await router.count_for_plan(acme, "glm", 16, messages=short_chat) == router.count_prompt_tokens(
        "glm", messages=short_chat
    )
    assert router.remote_counts.asked_texts == asked  # the estimate already fits the smallest pool


async def test_router_keeps_the_estimate_when_no_worker_can_count() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    settings = make_settings()
    async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as http:
        router = Router(settings, http)
        long_chat = [{"role": "user", "content": ENGLISH * 5}]
        counted = await router.count_for_plan(tenant_of(settings), "glm", 1024, messages=long_chat)
        assert counted == router.count_prompt_tokens("glm", messages=long_chat)
