"""Exact counts through the model's own chat template, found beside its tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from sparsegate.gateway.routing.chat_template import ChatTemplate
from sparsegate.gateway.routing.tokens import TokenCounter, TokenCounters
from sparsegate.gateway.settings import ModelConfig

DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def qwen_render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """What the fixture's template renders, written out by hand."""
    out = ""
    if tools:
        out += "<|im_start|>system\n"
        if messages[0]["role"] == "system":
            out += messages[0]["content"] + "\n\n"
        out += "# Tools\n<tools>" + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
        out += "\n</tools><|im_end|>\n"
    elif messages[0]["role"] == "system":
        out += f"<|im_start|>system\n{messages[0]['content']}<|im_end|>\n"
    else:
        out += DEFAULT_SYSTEM
    for m in messages:
        if m["role"] == "system":
            continue
        out += f"<|im_start|>{m['role']}\n{m.get('content') or ''}"
        for call in m.get("tool_calls") or []:
            fn = call["function"]
            out += f'\n<tool_call>\n{{"name": "{fn["name"]}", "arguments": {fn["arguments"]}}}\n</tool_call>'
        out += "<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def n_tokens(tok: Tokenizer, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


@pytest.fixture
def counter(model_dir: Path) -> TokenCounter:
    return TokenCounters([ModelConfig(name="qwen", tokenizer=model_dir / "tokenizer.json")]).for_model("qwen")


def test_template_is_found_beside_the_tokenizer(counter: TokenCounter, tokenizer_path: Path) -> None:
    assert counter.template is not None
    assert ChatTemplate.beside(tokenizer_path) is None  # a bare tokenizer.json has none


def test_counts_exactly_what_the_template_renders(counter: TokenCounter, tokenizer: Tokenizer) -> None:
    conversations = [
        [{"role": "user", "content": "Hello there, 机器学习 🚀"}],  # the template injects a system prompt
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "def f(x):\n\treturn x"}]},
            {"role": "assistant", "content": "It returns x."},
            {"role": "user", "content": "東京は?"},
        ],
    ]
    for messages in conversations:
        flat = [{**m, "content": m["content"][0]["text"]} if isinstance(m["content"], list) else m for m in messages]
        assert counter.count(messages=messages) == n_tokens(tokenizer, qwen_render(flat))
    # The injected default system prompt is counted, which generic framing would miss.
    generic = TokenCounter(counter.tokenizer)
    only_user = conversations[0]
    assert counter.count(messages=only_user) > generic.count(messages=only_user)


def test_tools_and_tool_calls_render_through_the_template(counter: TokenCounter, tokenizer: Tokenizer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "18C"},
    ]
    assert counter.count(messages=messages, tools=tools) == n_tokens(tokenizer, qwen_render(messages, tools))


def test_template_errors_fall_back_to_generic_framing(tmp_path: Path, tokenizer_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes(tokenizer_path.read_bytes())
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}x"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    counter = TokenCounters([ModelConfig(name="m", tokenizer=tmp_path / "tokenizer.json")]).for_model("m")
    assert counter.count(messages=[{"role": "user", "content": "hi"}]) == 1  # "x"
    messages = [{"role": "system", "content": "hi"}]
    assert counter.count(messages=messages) == TokenCounter(counter.tokenizer).count(messages=messages)


def test_chat_template_jinja_file_wins_and_broken_templates_are_ignored(tmp_path: Path, tokenizer_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes(tokenizer_path.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config"}))
    (tmp_path / "chat_template.jinja").write_text("file")
    template = ChatTemplate.beside(tmp_path / "tokenizer.json")
    assert template is not None and template.render([{"role": "user", "content": "x"}]) == "file"
    (tmp_path / "chat_template.jinja").write_text("{% if %}")
    assert ChatTemplate.beside(tmp_path / "tokenizer.json") is None


def test_named_templates_pick_tool_use_when_tools_are_given(tmp_path: Path) -> None:
    named = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools:{{ tools | length }}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named, "bos_token": {"content": "B"}}))
    template = ChatTemplate.beside(tmp_path / "tokenizer.json")
    assert template is not None
    assert template.render([]) == "plain"
    assert template.render([], tools=[{"a": 1}]) == "tools:1"
