"""The agent APIs end to end with the official SDKs: OpenAI Responses (stream, tools, previous_response_id across two
gateway replicas on one Redis, retrieve), embeddings, and Anthropic Messages (create, stream, count_tokens), through
gateway processes in front of sim worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e.harness import KEY_ACME, KEY_BETA, MODEL, Gateway, Sim, tenant
from tests.redis_server import RedisServer

TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up.",
    "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
}


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def config(sims: list[Sim], redis_url: str | None = None, **extra: Any) -> dict[str, Any]:
    acme = tenant("acme", KEY_ACME, limits={"rpm": 1000, "tpm": 10_000_000})
    beta = tenant("beta", KEY_BETA, limits={"rpm": 1000, "tpm": 10_000_000})
    pools = [{"name": "p", "model": MODEL, "max_context": 32_768, "workers": [s.url for s in sims]}]
    out: dict[str, Any] = {"tenants": [acme, beta], "pools": pools, **extra}
    if redis_url is not None:
        out["redis_url"] = redis_url
    return out


def oai(gw: Gateway, key: str = KEY_ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def claude(gw: Gateway, key: str = KEY_ACME) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def test_responses_create_stream_tools_and_previous_response_across_replicas(
    sims: Callable[..., Sim], gateways: Callable[..., Gateway], redis: RedisServer
) -> None:
    workers = [sims(), sims()]
    one = gateways(config(workers, redis.url))
    two = gateways(config(workers, redis.url))
    with oai(one) as c1, oai(two) as c2:
        first = c1.responses.create(model=MODEL, input="Name three colours.", max_output_tokens=8)
        assert first.id.startswith("resp_") and first.output_text
        assert first.usage is not None and first.usage.output_tokens == 8
        holder = [w for w in workers if w.stats()["received"] == 1]
        assert len(holder) == 1
        # The follow-up reaches the other replica, which finds the worker holding the first response in Redis.
        second = c2.responses.create(
            model=MODEL, input="And three more.", previous_response_id=first.id, max_output_tokens=4
        )
        assert second.previous_response_id == first.id
        assert holder[0].stats()["received"] == 2
        assert c2.responses.retrieve(second.id).id == second.id

        with c2.responses.stream(model=MODEL, input="Stream it.", max_output_tokens=500) as stream:
            names = [event.type for event in stream]
            final = stream.get_final_response()
        assert names[0] == "response.created" and names[-1] == "response.completed"
        assert final.usage is not None and names.count("response.output_text.delta") == final.usage.output_tokens

        called = c1.responses.create(
            model=MODEL, input="Find it.", tools=[TOOL], tool_choice="required", max_output_tokens=3
        )
        call = called.output[0]
        assert call.type == "function_call" and call.name == "lookup"


def test_another_tenants_response_id_is_404(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    gw = gateways(config([sims()]))
    with oai(gw) as acme, oai(gw, KEY_BETA) as beta:
        mine = acme.responses.create(model=MODEL, input="secret", max_output_tokens=2)
        with pytest.raises(openai.NotFoundError):
            beta.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            beta.responses.create(model=MODEL, input="continue", previous_response_id=mine.id)
        with pytest.raises(openai.NotFoundError):
            beta.responses.cancel(mine.id)
        assert acme.responses.retrieve(mine.id).status == "incomplete"  # max_output_tokens=2 cut it


def test_embeddings_charge_their_input(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    gw = gateways(config([sims()]))
    with oai(gw) as c:
        result = c.embeddings.create(model=MODEL, input=["alpha", "beta gamma"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 16
    assert result.usage.prompt_tokens > 0
    tokenized = httpx.post(
        gw.url + "/v1/tokenize",
        json={"model": MODEL, "prompt": "hello world"},
        headers={"authorization": f"Bearer {KEY_ACME}"},
        timeout=10,
    )
    assert tokenized.status_code == 200 and tokenized.json()["count"] > 0
    assert httpx.post(gw.url + "/v1/tokenize", json={"model": MODEL, "prompt": "x"}, timeout=10).status_code == 401


def test_anthropic_messages_create_stream_and_count(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    gw = gateways(config([sims()]))
    messages: list[Any] = [{"role": "user", "content": "Hello"}]
    with claude(gw) as c:
        message = c.messages.create(model=MODEL, max_tokens=6, messages=messages)
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6
        assert message.content[0].type == "text" and message.content[0].text
        with c.messages.stream(model=MODEL, max_tokens=5, messages=messages) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text and final.usage.output_tokens == 5
        counted = c.messages.count_tokens(model=MODEL, messages=messages)
        assert counted.input_tokens == message.usage.input_tokens
        tools: list[Any] = [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}]
        used = c.messages.create(model=MODEL, max_tokens=3, messages=messages, tools=tools, tool_choice={"type": "any"})
        assert used.stop_reason == "tool_use" and used.content[0].type == "tool_use"
    with claude(gw, "sk-wrong-key-000000") as bad, pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model=MODEL, max_tokens=1, messages=messages)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided: sk-...0000."},
    }


def test_anthropic_rate_limit_headers_and_429(sims: Callable[..., Sim], gateways: Callable[..., Gateway]) -> None:
    limited = tenant("acme", KEY_ACME, limits={"rpm": 2, "tpm": 1_000_000})
    pools = [{"name": "p", "model": MODEL, "max_context": 32_768, "workers": [sims().url]}]
    gw = gateways({"tenants": [limited], "pools": pools})
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": KEY_ACME, "anthropic-version": "2023-06-01"}
    first = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=10)
    assert first.status_code == 200
    assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert "x-ratelimit-limit-requests" not in first.headers
    httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=10)
    refused = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=10)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
