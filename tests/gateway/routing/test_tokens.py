"""Token counting: exact with a real tokenizer.json, and an estimate that never undercounts it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from sparsegate.gateway.routing.tokens import (
    ESTIMATE_PER_MESSAGE,
    ESTIMATE_PRIMING,
    TokenCounter,
    TokenCounters,
    text_size,
)
from sparsegate.gateway.settings import ConfigError, ModelConfig

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog, and then some more prose follows.",
    "cjk": "机器学习是人工智能的一个分支。東京は日本の首都です。안녕하세요",
    "emoji": "🙂🚀✨👩‍💻👨‍👩‍👧‍👦🇫🇷🇯🇵 rocket 🚀🚀🚀",
    "code": 'def f(x):\n\treturn {"k": [x, x ** 2]}  # comment\n\n\nclass A:  pass\r\n',
    "whitespace": "   \n\n\t\t  \u00a0\u2003 end  ",
    "unseen": "Ωμέγα ∑∫√ ÆØÅ ẞ ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0001f9ec",
    "empty": "",
}


def chatml(messages: list[dict[str, Any]]) -> str:
    out = "".join(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages)
    return out + "<|im_start|>assistant\n"


def llama3(messages: list[dict[str, Any]]) -> str:
    out = "<|bos|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m.get('content') or ''}<|eot_id|>" for m in messages
    )
    return out + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def rendered_tokens(tok: Tokenizer, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


def random_text(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x4E00, 0x9FFF), (0x1F300, 0x1F6FF), (0x0400, 0x04FF), (0x0600, 0x06FF), (0x09, 0x0D)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_text_estimate_never_below_real_tokens(tokenizer: Tokenizer, name: str) -> None:
    text = TEXTS[name]
    real = len(tokenizer.encode(text, add_special_tokens=False).ids)
    assert TokenCounter(None)._count_texts([text]) >= real


def test_estimate_never_below_real_tokens_on_random_unicode(tokenizer: Tokenizer) -> None:
    rng = random.Random(1)
    estimate = TokenCounter(None)
    for _ in range(300):
        text = random_text(rng, rng.randint(1, 200))
        assert estimate._count_texts([text]) >= len(tokenizer.encode(text, add_special_tokens=False).ids), text


@pytest.mark.parametrize("template", [chatml, llama3])
def test_message_estimate_covers_rendered_templates(tokenizer: Tokenizer, template: Any) -> None:
    rng = random.Random(2)
    estimate = TokenCounter(None)
    for _ in range(100):
        messages = [
            {"role": rng.choice(["system", "user", "assistant"]), "content": random_text(rng, rng.randint(0, 40))}
            for _ in range(rng.randint(1, 6))
        ]
        assert estimate.count(messages=messages) >= rendered_tokens(tokenizer, template(messages))
    empties = [{"role": "user", "content": ""}]
    assert estimate.count(messages=empties) >= rendered_tokens(tokenizer, template(empties))


def test_estimate_formula() -> None:
    messages = [{"role": "system", "content": "héllo"}, {"role": "user", "content": [{"type": "text", "text": "ab"}]}]
    assert TokenCounter(None).count(messages=messages) == 6 + 2 + 2 * ESTIMATE_PER_MESSAGE + ESTIMATE_PRIMING


def test_exact_count_matches_text_tokens(tokenizer: Tokenizer) -> None:
    counter = TokenCounter(tokenizer)
    for text in TEXTS.values():
        assert counter._count_texts([text]) == len(tokenizer.encode(text, add_special_tokens=False).ids)
    assert counter._count_texts(list(TEXTS.values())) == sum(
        len(tokenizer.encode(t, add_special_tokens=False).ids) for t in TEXTS.values()
    )


def test_exact_messages_cover_chatml_and_llama3_framing_tightly(tokenizer: Tokenizer) -> None:
    counter = TokenCounter(tokenizer)
    messages = [
        {"role": "system", "content": TEXTS["english"]},
        {"role": "user", "content": TEXTS["cjk"]},
        {"role": "assistant", "content": TEXTS["code"]},
        {"role": "user", "content": TEXTS["emoji"]},
    ]
    n = counter.count(messages=messages)
    for template in (chatml, llama3):
        real = rendered_tokens(tokenizer, template(messages))
        assert real <= n <= real + 4, (template.__name__, real, n)


def test_exact_and_estimate_count_names_tool_calls_and_tools(tokenizer: Tokenizer) -> None:
    base = [{"role": "user", "content": "weather?"}]
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c":1}'}}],
    }
    named = [{"role": "user", "name": "alice", "content": "weather?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    for counter in (TokenCounter(tokenizer), TokenCounter(None)):
        plain = counter.count(messages=base)
        assert counter.count(messages=named) > plain
        assert counter.count(messages=[*base, call]) > counter.count(messages=[*base, {"role": "assistant"}])
        with_tools = counter.count(messages=base, tools=tools)
        assert with_tools - plain >= counter._count_texts([json.dumps(tools, separators=(",", ":"))])


def test_token_id_prompts_count_exactly() -> None:
    for counter in (TokenCounter(None),):
        assert counter.count(prompt=[1, 2, 3]) == 3
        assert counter.count(prompt=[[1, 2], [3, 4, 5]]) == 5
        assert counter.count(prompt=[]) == 0


def test_text_prompts(tokenizer: Tokenizer) -> None:
    exact = TokenCounter(tokenizer)
    text = TEXTS["code"]
    assert exact.count(prompt=text) == len(tokenizer.encode(text).ids)  # BOS included, as the worker adds it
    assert exact.count(prompt=[text, text]) == 2 * len(tokenizer.encode(text).ids)
    assert exact.count(prompt=[7, 8]) == 2
    estimate = TokenCounter(None)
    assert estimate.count(prompt=text) >= exact.count(prompt=text)
    assert estimate.count(prompt=["ab", "c"]) == 5


def test_long_prompt_estimate_never_below_exact(tokenizer: Tokenizer) -> None:
    rng = random.Random(3)
    text = "".join(rng.choice(list(TEXTS.values())) for _ in range(2000))
    messages = [{"role": "user", "content": text}]
    assert TokenCounter(None).count(messages=messages) >= TokenCounter(tokenizer).count(messages=messages)


def test_counters_load_each_tokenizer_once_and_keep_it_across_reloads(tokenizer_path: Path) -> None:
    models = [
        ModelConfig(name="glm", tokenizer=tokenizer_path),
        ModelConfig(name="glm-alias", tokenizer=tokenizer_path),
    ]
    first = TokenCounters(models)
    assert first.for_model("glm") is first.for_model("glm-alias")
    assert first.for_model("glm").exact
    assert not first.for_model("unknown").exact
    second = TokenCounters(models[:1], previous=first)
    assert second.for_model("glm") is first.for_model("glm")


def test_missing_tokenizer_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot load tokenizer .*nope\.json"):
        TokenCounters([ModelConfig(name="glm", tokenizer=tmp_path / "nope.json")])


def test_text_size_counts_everything_counted() -> None:
    messages = [{"role": "user", "content": "abc", "name": "n"}]
    assert text_size(messages, "xy", [{"a": 1}]) == 3 + 1 + 2 + len('[{"a":1}]')
