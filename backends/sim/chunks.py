"""The JSON this worker sends back, field for field as SGLang 0.5.23 serializes it.

SGLang writes chat stream chunks two ways, and the difference shows on the wire:

- text chunks (the opening role chunk, content deltas, the closing finish chunks) go through msgspec
  (`sse_utils.build_sse_content`): `delta` always has `reasoning_content` (null or a string) but leaves out
  `role` and `content` when they are None, each choice has `logprobs`, `finish_reason` and `matched_stop`,
  and the chunk has no `usage` key;
- tool-call chunks and the usage chunk go through pydantic (`ChatCompletionStreamResponse.model_dump_json`):
  `delta` has `role: null`, `content: null` and `reasoning_content: null` next to `tool_calls`, and the chunk
  has `usage` (null, or the usage object).

`usage` is `UsageInfo.model_dump()`: `prompt_tokens`, `total_tokens`, `completion_tokens`,
`prompt_tokens_details` (null unless `--enable-cache-report`, then `{"cached_tokens": n}`),
`reasoning_tokens` (0) and `completion_tokens_details` (null when no reasoning tokens). Completions' last
usage chunk is dumped with `exclude_none`, so its nulls are left out.

Non-streamed responses carry `metadata: {"weight_version": "default"}`; a chat message has
`reasoning_content: null` and no `tool_calls` key unless it made calls (`ChatMessage` drops it when None).
Completions chunks are pydantic too (`usage: null` in each). Finish reasons and every chunk id come from the
engine's output for that choice: with `n > 1` the ids are `rid_0`, `rid_1`, ... per choice, and the closing
finish chunks, sent after every choice is done, all carry the id of the last output seen.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
METADATA: dict[str, Any] = {"weight_version": "default"}


def sse(payload: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying `payload` (compact, UTF-8, as msgspec and pydantic write it)."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def error_sse(payload: dict[str, Any]) -> bytes:
    """A mid-stream error event: SGLang writes it with `json.dumps`' default separators, spaces included."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def usage_info(
    prompt_tokens: int, completion_tokens: int, *, cached_tokens: int | None = None, reasoning_tokens: int = 0
) -> dict[str, Any]:
    """SGLang's `UsageInfo`, dumped; `cached_tokens` None means `--enable-cache-report` is off."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None if cached_tokens is None else {"cached_tokens": cached_tokens},
        "reasoning_tokens": reasoning_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens} if reasoning_tokens else None,
    }


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def tool_call(call_id: str | None, index: int, name: str | None, arguments: str) -> dict[str, Any]:
    """SGLang's `ToolCall`, dumped (a streamed argument delta has null `id` and `name`)."""
    return {"id": call_id, "index": index, "type": "function", "function": {"name": name, "arguments": arguments}}


class ChatWire:
    """Builds one `/v1/chat/completions` answer's JSON."""

    def __init__(self, model: str, created: int) -> None:
        self.model = model
        self.created = created

    def _head(self, chunk_id: str) -> dict[str, Any]:
        return {"id": chunk_id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def _text_chunk(
        self,
        chunk_id: str,
        index: int,
        *,
        role: str | None = None,
        content: str | None = None,
        reasoning_content: str | None = None,
        finish_reason: str | None = None,
        matched_stop: str | int | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # msgspec's StreamDelta: reasoning_content always, role and content only when set.
        delta: dict[str, Any] = {"reasoning_content": reasoning_content}
        if role is not None:
            delta["role"] = role
        if content is not None:
            delta["content"] = content
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
            "matched_stop": matched_stop,
        }
        return {**self._head(chunk_id), "choices": [choice]}

    def role_chunk(self, chunk_id: str, index: int) -> dict[str, Any]:
        """The chunk that opens a choice."""
        return self._text_chunk(chunk_id, index, role="assistant", content="")

    def content_chunk(
        self, chunk_id: str, index: int, text: str, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Text of one choice."""
        return self._text_chunk(chunk_id, index, content=text, logprobs=logprobs)

    def reasoning_chunk(
        self, chunk_id: str, index: int, text: str, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Reasoning of one choice (with a reasoning parser)."""
        return self._text_chunk(chunk_id, index, reasoning_content=text, logprobs=logprobs)

    def tool_call_chunk(self, chunk_id: str, index: int, call: dict[str, Any]) -> dict[str, Any]:
        """One tool-call delta of one choice (pydantic: role, content and usage are null)."""
        delta = {"role": None, "content": None, "reasoning_content": None, "tool_calls": [call]}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None, "matched_stop": None}
        return {**self._head(chunk_id), "choices": [choice], "usage": None}

    def finish_chunk(self, chunk_id: str, index: int, reason: str, matched_stop: str | int | None) -> dict[str, Any]:
        """The chunk that closes a choice."""
        return self._text_chunk(chunk_id, index, finish_reason=reason, matched_stop=matched_stop)

    def usage_chunk(self, chunk_id: str, usage: dict[str, Any]) -> dict[str, Any]:
        """The last chunk before `[DONE]` when `stream_options.include_usage` is on."""
        return {**self._head(chunk_id), "choices": [], "usage": usage}

    def choice(
        self,
        index: int,
        text: str,
        reason: str | None,
        matched_stop: str | int | None,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        logprobs: dict[str, Any] | None = None,
        reasoning_content: str | None = None,
    ) -> dict[str, Any]:
        """One choice of a non-streamed response."""
        message: dict[str, Any] = {"role": "assistant", "content": text, "reasoning_content": reasoning_content}
        if tool_calls is not None:
            message["tool_calls"] = tool_calls
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": reason,
            "matched_stop": matched_stop,
        }

    def response(self, response_id: str, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        """A whole non-streamed response."""
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
            "metadata": dict(METADATA),
        }


class CompletionWire:
    """Builds one `/v1/completions` answer's JSON (all pydantic in SGLang)."""

    def __init__(self, model: str, created: int) -> None:
        self.model = model
        self.created = created

    def choice(
        self,
        index: int,
        text: str,
        reason: str | None,
        matched_stop: str | int | None,
        *,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One choice, streamed or not."""
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": reason,
            "matched_stop": matched_stop,
        }

    def chunk(self, chunk_id: str, choice: dict[str, Any]) -> dict[str, Any]:
        """One streamed chunk."""
        return {
            "id": chunk_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": None,
        }

    def usage_chunk(self, chunk_id: str, usage: dict[str, Any]) -> dict[str, Any]:
        """The last chunk before `[DONE]`, dumped with `exclude_none` as SGLang does."""
        chunk = {
            "id": chunk_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }
        return dict(_without_none(chunk))

    def response(self, response_id: str, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        """A whole non-streamed response."""
        return {
            "id": response_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
            "metadata": dict(METADATA),
        }
