"""Prompt token counting: exact with a model's `tokenizer.json`, a safe over-estimate without one.

The count decides which pool a request fits and what the limiter reserves, so an undercount is the costly
error (the worker refuses, or a pool too small is picked); a small overcount only moves a borderline request
to a larger pool.

**Estimate (no tokenizer).** Every text counts its UTF-8 bytes. Byte-level BPE (GPT-2/Llama-3/Qwen/DeepSeek/GLM
style) starts from one token per byte and merges only join tokens, so a text never has more tokens than
bytes; SentencePiece with byte fallback is the same, except for a leading "▁" that the per-message allowance
absorbs. Framing adds `ESTIMATE_PER_MESSAGE` (8) per message, which holds the special tokens, role and
separators that ChatML, Llama-3, DeepSeek and GLM templates put around a message (4 plus a 1-2 token role),
and `ESTIMATE_PRIMING` (3) for the assistant header that opens the reply. Plain ASCII prose has about 4 bytes
per token, so the estimate is roughly 4x high on English text and about right on code, CJK and emoji.

**Exact (tokenizer).** Texts are encoded with the model's tokenizer. When the tokenizer's folder also holds
the model's chat template (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`, as Hugging
Face model folders do), messages and tools are rendered with it and the result encoded: the exact prompt the
worker builds (`chat_template`). A `tokenizer.json` alone carries no template, so messages are then framed
generically: each message costs `FRAME_PER_MESSAGE` (4) tokens plus its
role's tokens, which is what ChatML (`<|im_start|>role\\n...<|im_end|>\\n`) and Llama-3
(`<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>`) add and more than DeepSeek or GLM add; the
reply is primed with `FRAME_PRIMING` (5: a BOS and the assistant header) plus the tokens of "assistant".
Templates that inject text of their own (a default system prompt, a knowledge-cutoff date) add tokens this
framing cannot see; give such models enough margin in `max_context` or render their template upstream.

Both counts include, per message: `content` (a string or a list of parts with "text"; image and audio parts
are not counted), `name`, `reasoning_content`, and each tool call's function name and arguments; a request's
`tools` are counted as their JSON. Token-id prompts count exactly: one token per id. A list of prompts counts
the sum, as the completions API reports usage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Tokenizer

from ..settings import ConfigError, ModelConfig
from .chat_template import ChatTemplate

log = logging.getLogger(__name__)

ESTIMATE_PER_MESSAGE = 8
ESTIMATE_PRIMING = 3
ESTIMATE_PER_TOOL_CALL = 8
FRAME_PER_MESSAGE = 4
FRAME_PRIMING = 5
FRAME_PER_TOOL_CALL = 4

Messages = Sequence[dict[str, Any]]
Prompt = str | list[str] | list[int] | list[list[int]]


def _part_texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    yield text


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _tool_call_texts(message: dict[str, Any]) -> Iterator[list[str]]:
    """One list of texts per tool call (name and arguments); the legacy `function_call` counts as one."""
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                yield [_as_text(fn.get("name") or ""), _as_text(fn.get("arguments") or "")]
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        yield [_as_text(legacy.get("name") or ""), _as_text(legacy.get("arguments") or "")]


def _message_texts(message: dict[str, Any]) -> Iterator[str]:
    """Every text of a message that a chat template renders, except its role."""
    yield from _part_texts(message.get("content"))
    for field in ("name", "reasoning_content"):
        value = message.get(field)
        if isinstance(value, str) and value:
            yield value
    for call in _tool_call_texts(message):
        yield from call


def text_size(messages: Messages | None = None, prompt: Prompt | None = None, tools: Any = None) -> int:
    """Characters of text to count, cheaply: decides whether counting is worth a thread."""
    size = 0
    for m in messages or ():
        for text in _message_texts(m):
            size += len(text)
    if isinstance(prompt, str):
        size += len(prompt)
    elif isinstance(prompt, list):
        for p in prompt:
            if isinstance(p, str):
                size += len(p)
    if tools:
        size += len(_as_text(tools))
    return size


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _token_id_count(prompt: list[Any]) -> int | None:
    """Exact count for token-id prompts (`list[int]` or `list[list[int]]`); None for text prompts."""
    if not prompt:
        return 0
    first = prompt[0]
    if isinstance(first, int):
        return len(prompt)
    if isinstance(first, list):
        return sum(len(p) for p in prompt)
    return None


class TokenCounter:
    """Counts for one model: `tokenizer` is None for the estimate; `template` renders chat messages exactly."""

    def __init__(self, tokenizer: Tokenizer | None = None, template: ChatTemplate | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template if tokenizer is not None else None
        self._role_cost: dict[str, int] = {}
        self._template_failed = False

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def count(self, *, messages: Messages | None = None, prompt: Prompt | None = None, tools: Any = None) -> int:
        total = 0
        tools_counted = False
        if messages is not None:
            templated = self._count_templated(messages, tools)
            if templated is not None:
                total += templated
                tools_counted = True
            else:
                total += self._count_messages(messages)
        if prompt is not None:
            total += self._count_prompt(prompt)
        if tools and not tools_counted:
            total += self._count_texts([_as_text(tools)]) + (FRAME_PER_MESSAGE if self.exact else ESTIMATE_PER_MESSAGE)
        return total

    def _count_templated(self, messages: Messages, tools: Any) -> int | None:
        if self.template is None or self.tokenizer is None:
            return None
        try:
            rendered = self.template.render(list(messages), tools)
        except Exception as exc:  # a template may reject a request (e.g. roles out of order); count generically
            if not self._template_failed:
                log.warning("chat template failed (%s); counting with generic framing where it does", exc)
                self._template_failed = True
            return None
        return len(_encode(self.tokenizer, [rendered], add_special_tokens=False)[0])  # len(): no ids list built

    def _count_texts(self, texts: Sequence[str]) -> int:
        if self.tokenizer is None:
            return sum(utf8_len(t) for t in texts)
        texts = [t for t in texts if t]
        if not texts:
            return 0
        return sum(len(e) for e in _encode(self.tokenizer, texts, add_special_tokens=False))

    def _role(self, role: str) -> int:
        cost = self._role_cost.get(role)
        if cost is None:
            cost = self._count_texts([role])
            if len(self._role_cost) < 64:  # roles are few; don't let odd ones grow the cache
                self._role_cost[role] = cost
        return cost

    def _count_messages(self, messages: Messages) -> int:
        texts: list[str] = []
        framing = 0
        for m in messages:
            texts.extend(_message_texts(m))
            calls = sum(1 for _ in _tool_call_texts(m))
            if self.exact:
                framing += FRAME_PER_MESSAGE + self._role(str(m.get("role", ""))) + calls * FRAME_PER_TOOL_CALL
                if isinstance(m.get("name"), str) and m.get("name"):
                    framing += 1
            else:
                framing += ESTIMATE_PER_MESSAGE + calls * ESTIMATE_PER_TOOL_CALL
        if self.exact:
            framing += FRAME_PRIMING + self._role("assistant")
        else:
            framing += ESTIMATE_PRIMING
        return framing + self._count_texts(texts)

    def _count_prompt(self, prompt: Prompt) -> int:
        if isinstance(prompt, str):
            prompts: list[str] = [prompt]
        else:
            ids = _token_id_count(prompt)
            if ids is not None:
                return ids
            prompts = [p for p in prompt if isinstance(p, str)]
        if self.tokenizer is None:
            # +1 per prompt for the BOS a worker's tokenizer may add.
            return sum(utf8_len(p) + 1 for p in prompts)
        # With special tokens, as the worker encodes a completions prompt (BOS and all).
        return sum(len(e) for e in _encode(self.tokenizer, prompts, add_special_tokens=True))


def _encode(tokenizer: Tokenizer, texts: list[str], *, add_special_tokens: bool) -> list[Encoding]:
    # `encode_batch_fast`, even for one text: unlike `encode` it releases the GIL while it works (so a count on
    # a worker thread leaves the event loop running), spreads several texts over the tokenizer's threads, and
    # skips the character offsets nobody here reads. Its ids are the same as `encode`'s.
    return tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises plain Exception for a missing or malformed file
        raise ConfigError(f"cannot load tokenizer {path}: {exc}") from exc


class TokenCounters:
    """One `TokenCounter` per configured model, tokenizers loaded once and shared across reloads by path."""

    def __init__(self, models: Iterable[ModelConfig], previous: TokenCounters | None = None) -> None:
        cache = dict(previous._by_path) if previous is not None else {}
        self._by_path: dict[Path, TokenCounter] = {}
        self._by_model: dict[str, TokenCounter] = {}
        for m in models:
            if m.tokenizer is None:
                continue
            counter = cache.get(m.tokenizer) or self._by_path.get(m.tokenizer)
            if counter is None:
                template = ChatTemplate.beside(m.tokenizer)
                counter = TokenCounter(load_tokenizer(m.tokenizer), template)
                log.info(
                    "loaded tokenizer for %s from %s (%s)",
                    m.name,
                    m.tokenizer,
                    "with its chat template" if template is not None else "generic chat framing",
                )
            self._by_path[m.tokenizer] = counter
            self._by_model[m.name] = counter
        self._estimate = TokenCounter(None)

    def for_model(self, model: str) -> TokenCounter:
        return self._by_model.get(model, self._estimate)
