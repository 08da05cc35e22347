"""Real clients through the gateway against the SGLang-faithful sim: the openai SDK, LangChain's `ChatOpenAI` and
the LiteLLM SDK, with tools (streamed and not), JSON mode and JSON schema, logprobs and n = 2. Each client parses
what the relay sends with its own models, so an answer off OpenAI's shape fails here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.e2e.harness import KEY_ACME, MODEL, Gateway, Sim, tenant

# LiteLLM fetches its model price map from the internet at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_openai import ChatOpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
        },
    },
}
# LiteLLM imports its GitHub Copilot provider lazily, and pydantic warns about that module's own TypedDict.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* (are|is) using the `ReadOnly` qualifier:UserWarning")
HELLO = [{"role": "user", "content": "What is the weather in Paris?"}]


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("sdk")
    sim = Sim(model=MODEL, max_context=32_768, args=["--itl-ms", "0"], workdir=workdir).start()
    config = {
        "tenants": [tenant("acme", KEY_ACME, limits={"rpm": 10_000, "tpm": 10_000_000})],
        "pools": [{"name": "short", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
    }
    gw = Gateway(config=config, workdir=workdir).start()
    yield gw
    gw.stop()
    sim.stop()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_ACME, max_retries=0)
    yield c
    c.close()


def _check_weather_args(arguments: str | dict[str, Any]) -> None:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit")
    assert "days" not in args or 1 <= args["days"] <= 7


# --- the openai SDK ---


def test_openai_n2_stream_one_id_per_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, n=2, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    ids, text, finishes, usage = set(), {0: "", 1: ""}, {}, None
    for chunk in stream:
        ids.add(chunk.id)
        for choice in chunk.choices:
            assert choice.delta.role in (None, "assistant")
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert len(ids) == 1 and all(text.values()) and set(finishes) == {0, 1}
    assert usage is not None and usage.completion_tokens > 0

    whole = client.chat.completions.create(model=MODEL, messages=HELLO, n=2, max_tokens=12)
    assert not whole.id.endswith(("_0", "_1")) and [c.index for c in whole.choices] == [0, 1]


def test_openai_tools_streamed_and_whole(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=HELLO, tools=[WEATHER], tool_choice="required", max_tokens=256
    )
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert whole.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    _check_weather_args(call.function.arguments)

    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, tools=[WEATHER], tool_choice="auto", max_tokens=256, stream=True
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += (delta.function and delta.function.name) or ""
                arguments += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    _check_weather_args(arguments)


def test_openai_json_mode_schema_and_logprobs(client: openai.OpenAI) -> None:
    json_mode = client.chat.completions.create(
        model=MODEL, messages=HELLO, response_format={"type": "json_object"}, max_tokens=256
    )
    assert isinstance(json.loads(json_mode.choices[0].message.content or ""), dict)

    parsed = client.beta.chat.completions.parse(model=MODEL, messages=HELLO, response_format=Person, max_tokens=256)
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person)

    with_logprobs = client.chat.completions.create(
        model=MODEL, messages=HELLO, logprobs=True, top_logprobs=2, max_tokens=8, seed=7
    )
    content = with_logprobs.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    again = client.chat.completions.create(
        model=MODEL, messages=HELLO, logprobs=True, top_logprobs=2, max_tokens=8, seed=7
    )
    assert again.choices[0].message.content == with_logprobs.choices[0].message.content


# --- LangChain ---


def _chat_model(gateway: Gateway, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=gateway.url + "/v1", api_key=KEY_ACME, max_retries=0, **kw)  # type: ignore[arg-type]


def test_langchain_bind_tools_invoke_and_stream(gateway: Gateway) -> None:
    llm = _chat_model(gateway, max_tokens=256).bind_tools([WEATHER], tool_choice="get_weather")
    message = llm.invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
    _check_weather_args(message.tool_calls[0]["args"])  # type: ignore[attr-defined]

    merged: AIMessageChunk | None = None
    for chunk in llm.stream("What is the weather in Paris?"):
        assert isinstance(chunk, AIMessageChunk)
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and [c["name"] for c in merged.tool_calls] == ["get_weather"]
    _check_weather_args(merged.tool_calls[0]["args"])


def test_langchain_with_structured_output(gateway: Gateway) -> None:
    # (json_mode sends no schema: the answer is valid JSON, but only the prompt asks for these fields)
    for method in ("json_schema", "function_calling"):
        llm = _chat_model(gateway, max_tokens=256).with_structured_output(Person, method=method)  # type: ignore[arg-type]
        prompt = "Describe a person as JSON with name, age and tags."
        assert isinstance(llm.invoke(prompt), Person), method


def test_langchain_n2_and_logprobs(gateway: Gateway) -> None:
    llm = _chat_model(gateway, max_tokens=8, n=2, logprobs=True, top_logprobs=2)
    result = llm.generate([[HumanMessage("Hello")]])
    generations = result.generations[0]
    assert len(generations) == 2 and all(g.text for g in generations)
    assert all(g.generation_info and g.generation_info["logprobs"]["content"] for g in generations)  # type: ignore[index]


# --- LiteLLM ---


def _litellm(gateway: Gateway, **kw: Any) -> Any:
    return litellm.completion(
        model=f"openai/{MODEL}", api_base=gateway.url + "/v1", api_key=KEY_ACME, num_retries=0, **kw
    )


def test_litellm_tools_json_logprobs_and_n2(gateway: Gateway) -> None:
    tools = _litellm(gateway, messages=HELLO, tools=[WEATHER], tool_choice="required", max_tokens=256)
    call = tools.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    _check_weather_args(call.function.arguments)

    json_mode = _litellm(gateway, messages=HELLO, response_format={"type": "json_object"}, max_tokens=256)
    assert isinstance(json.loads(json_mode.choices[0].message.content), dict)

    both = _litellm(gateway, messages=HELLO, n=2, max_tokens=8, logprobs=True, top_logprobs=2)
    assert len(both.choices) == 2 and not both.id.endswith(("_0", "_1"))
    assert both.choices[0].logprobs["content"]

    streamed = _litellm(gateway, messages=HELLO, tools=[WEATHER], tool_choice="required", max_tokens=256, stream=True)
    arguments, name = "", ""
    for chunk in streamed:
        for delta in chunk.choices[0].delta.tool_calls or []:
            name += delta.function.name or ""
            arguments += delta.function.arguments or ""
    assert name == "get_weather"
    _check_weather_args(arguments)
