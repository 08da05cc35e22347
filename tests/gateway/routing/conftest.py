"""Shared fixtures: settings builders and a real byte-level BPE `tokenizer.json` trained on the spot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# The pre-tokenizer split of Llama-3 (and, with small changes, Qwen2 and DeepSeek-V3).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|bos|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CORPUS_SNIPPETS = [
    "The quick brown fox jumps over the lazy dog. ",
    # Role names at line starts and blank lines, as chat templates render them, so that (as in real
    # tokenizers) they are single tokens.
    "system\nuser\n\nassistant\n\ntool\ndeveloper\n",
    "user\n\nHello\n\nassistant\n\nHi there\n\n",
    "You are a helpful assistant. Answer briefly and cite your sources. ",
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (let i = 0; i < items.length; i++) { console.log(`${i}: ${items[i]}`); }\n",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n',
    "机器学习是人工智能的一个分支。深度学习使用多层神经网络。",
    "東京は日本の首都です。今日はいい天気ですね。",
    "안녕하세요, 만나서 반갑습니다. ",
    "Привет, как дела? Всё хорошо. ",
    "مرحبا بالعالم ",
    "🙂🚀✨ emoji 👩‍💻 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 ",
    "   indented\n\n\ttabbed\r\nwindows line  ",
    "1234567890 3.14159 2.71828 1e-9 0xdeadbeef ",
]


def _corpus(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(3000):
        lines.append("".join(rng.choice(CORPUS_SNIPPETS) for _ in range(rng.randint(1, 4))))
    return lines


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE laid out as Llama-3, Qwen2 and DeepSeek ship theirs: their split regex, then bytes,
    with ChatML/Llama-3 special tokens and a BOS post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(random.Random(7)), trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_path))


# A Qwen-style ChatML template: it injects a default system prompt and renders tools, which the generic
# framing cannot know about.
QWEN_STYLE_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}{%- continue %}{%- endif %}
{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{{- '\\n<tool_call>\\n{"name": "' + call.function.name + '", "arguments": ' }}
{{- call.function.arguments + '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


@pytest.fixture(scope="session")
def model_dir(tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face style model folder: tokenizer.json plus tokenizer_config.json with a chat template."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "tokenizer.json").write_bytes(tokenizer_path.read_bytes())
    config = {"chat_template": QWEN_STYLE_TEMPLATE, "bos_token": None, "eos_token": "<|im_end|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder
