"""The simulated tokenizer behind `/v1/tokenize`, `/v1/detokenize` and `/v1/embeddings`.

Counts agree with `model` exactly (a text is ``ceil(utf8_bytes / 4)`` tokens, a chat message 4 more, the reply
prime 3, a completions prompt 1 BOS), so a gateway that asks `/v1/tokenize` learns the count the worker will report
as usage. Ids are reversible: a text token is its (up to) four UTF-8 bytes behind a 0x01 marker byte, read as a
big-endian integer, so `/v1/detokenize` gives the text back. Framing tokens are small ids below 256 and are
dropped by `skip_special_tokens` (the default), as a real tokenizer drops its special tokens.

Embeddings are unit vectors drawn from sha256 of the input text: the same text gives the same vector on every
worker. `encoding_format: "base64"` (the `openai` SDK's default) packs them as little-endian float32, as SGLang does.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from collections.abc import Sequence
from typing import Any

from .errors import BadRequest
from .model import (
    CHAT_REPLY_PRIME_TOKENS,
    CHAT_TOKENS_PER_MESSAGE,
    COMPLETION_BOS_TOKENS,
    chat_prompt_tokens,
    completion_prompt_tokens,
)

BOS = 1
MESSAGE_START, MESSAGE_ROLE, MESSAGE_END, MESSAGE_NEWLINE = 2, 3, 4, 5
REPLY_PRIME = (6, 7, 8)
SPECIAL_NAMES = {BOS: "<s>", MESSAGE_START: "<|msg|>", MESSAGE_ROLE: "<|role|>", MESSAGE_END: "<|end|>"}
SPECIAL_NAMES |= {MESSAGE_NEWLINE: "\n", 6: "<|assistant|>", 7: "<|think|>", 8: "\n"}
EMBEDDING_DIMENSIONS = 16
MAX_EMBEDDING_DIMENSIONS = 4096

assert len(REPLY_PRIME) == CHAT_REPLY_PRIME_TOKENS
assert COMPLETION_BOS_TOKENS == 1 and CHAT_TOKENS_PER_MESSAGE == 4


def encode_text(text: str) -> list[int]:
    """A text's ids: four UTF-8 bytes each, behind a marker byte so leading zero bytes survive."""
    raw = text.encode("utf-8")
    return [int.from_bytes(b"\x01" + raw[at : at + 4], "big") for at in range(0, len(raw), 4)]


def decode_ids(ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    """The text of `ids`; a special id becomes its name unless skipped."""
    out = bytearray()
    for token in ids:
        if token < 256:
            if not skip_special_tokens:
                out += SPECIAL_NAMES.get(token, f"<|{token}|>").encode()
            continue
        size = (token.bit_length() + 7) // 8
        out += token.to_bytes(size, "big")[1:]
    return out.decode("utf-8", errors="replace")


def encode_prompt(text: str, *, add_special_tokens: bool = True) -> list[int]:
    """A completions-style prompt: BOS (with special tokens) and the text."""
    ids = encode_text(text)
    return [BOS, *ids] if add_special_tokens else ids


def encode_messages(messages: Sequence[tuple[str, str]]) -> list[int]:
    """A chat prompt of (role, text) messages, framed as `model.chat_prompt_tokens` counts it."""
    ids: list[int] = []
    for _, text in messages:
        ids += [MESSAGE_START, MESSAGE_ROLE, *encode_text(text), MESSAGE_END, MESSAGE_NEWLINE]
    ids += REPLY_PRIME
    assert len(ids) == chat_prompt_tokens([text for _, text in messages])
    return ids


def content_text(content: Any, where: str) -> str:
    """The text of an OpenAI/Anthropic message content: a string, or the `text` of its text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise BadRequest(f"{where} parts must be objects.")
            text = part.get("text")
            if part.get("type") in ("text", "input_text", "output_text") and isinstance(text, str):
                texts.append(text)
        return "".join(texts)
    raise BadRequest(f"{where} must be a string, a list of parts, or null.")


def chat_messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    """`messages` of a chat-shaped body as (role, text) pairs; `BadRequest` when malformed."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.")
    out: list[tuple[str, str]] = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{position}] must be an object with a string 'role'.")
        out.append((message["role"], content_text(message.get("content"), f"messages[{position}].content")))
    return out


def tokenize(body: dict[str, Any], max_context: int) -> dict[str, Any]:
    """`/v1/tokenize`: exactly one of `prompt` (a string or a list of strings) or `messages`."""
    prompt, messages = body.get("prompt"), body.get("messages")
    if (prompt is None) == (messages is None):
        raise BadRequest("Exactly one of 'prompt' or 'messages' must be provided.")
    add_special = body.get("add_special_tokens", True)
    if not isinstance(add_special, bool):
        raise BadRequest("'add_special_tokens' must be a boolean.")
    if messages is not None:
        ids = encode_messages(chat_messages(body))
        return {"tokens": ids, "count": len(ids), "max_model_len": max_context}
    if isinstance(prompt, str):
        ids = encode_prompt(prompt, add_special_tokens=add_special)
        return {"tokens": ids, "count": len(ids), "max_model_len": max_context}
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        batch = [encode_prompt(p, add_special_tokens=add_special) for p in prompt]
        return {"tokens": batch, "count": [len(ids) for ids in batch], "max_model_len": max_context}
    raise BadRequest("'prompt' must be a string or a list of strings.")


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def detokenize(body: dict[str, Any]) -> dict[str, Any]:
    """`/v1/detokenize`: `tokens` is a list of ids or a list of such lists."""
    tokens = body.get("tokens")
    skip = body.get("skip_special_tokens", True)
    if not isinstance(skip, bool):
        raise BadRequest("'skip_special_tokens' must be a boolean.")
    if isinstance(tokens, list) and _token_ids(tokens):
        return {"text": decode_ids(tokens, skip_special_tokens=skip)}
    if isinstance(tokens, list) and tokens and all(_token_ids(t) for t in tokens):
        return {"text": [decode_ids(t, skip_special_tokens=skip) for t in tokens]}
    raise BadRequest("'tokens' must be a list of token ids or a list of such lists.")


def _vector(text: str, dimensions: int) -> list[float]:
    rng = random.Random(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big"))
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """Each input as (key text, prompt tokens): a string, a list of strings, ids, or a list of id lists."""
    if isinstance(value, str):
        return [(value, completion_prompt_tokens(value))]
    if _token_ids(value) and value:
        return [("ids:" + ",".join(map(str, value)), len(value))]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [(v, completion_prompt_tokens(v)) for v in value]
    if isinstance(value, list) and value and all(_token_ids(v) and v for v in value):
        return [("ids:" + ",".join(map(str, v)), len(v)) for v in value]
    raise BadRequest("'input' must be a string, a list of strings, a list of token ids, or a list of such lists.")


def embed(body: dict[str, Any], model: str) -> dict[str, Any]:
    """`/v1/embeddings` as SGLang answers it: `data[]`, `model`, `object: "list"`, chat-shaped `usage`."""
    inputs = embedding_inputs(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest(f"encoding_format must be either 'float' or 'base64', got {encoding!r}")
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = EMBEDDING_DIMENSIONS
    elif isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 0 < dimensions <= 4096:
        raise BadRequest(f"'dimensions' must be an integer in 1..{MAX_EMBEDDING_DIMENSIONS}.")
    data = []
    for index, (text, _) in enumerate(inputs):
        vector = _vector(text, dimensions)
        encoded: list[float] | str = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"embedding": encoded, "index": index, "object": "embedding"})
    prompt_tokens = sum(tokens for _, tokens in inputs)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}
    return {"data": data, "model": body.get("model") or model, "object": "list", "usage": usage}
