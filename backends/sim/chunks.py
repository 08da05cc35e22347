"""The JSON this worker sends back: OpenAI-shaped responses and stream chunks, as SGLang writes them.

Chat streams open each choice with `delta: {"role": "assistant", "content": ""}`, send one token per
chunk, and close each choice with an empty delta carrying `finish_reason` (plus SGLang's `matched_stop`).
With `stream_options.include_usage` every chunk carries `"usage": null` and one last chunk with
`"choices": []` and the full usage comes before `data: [DONE]`. `id` and `created` never change within
a response.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import status_phrase

DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying `payload`."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Shape:
    """Builds one response's JSON; subclasses fill in the chat or completions specifics."""

    chunk_object = ""
    response_object = ""
    opens_with_role = False

    def __init__(self, rid: str, model: str, created: int, *, include_usage: bool = False) -> None:
        self.rid = rid
        self.model = model
        self.created = created
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.rid,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def role_chunk(self, index: int) -> dict[str, Any]:
        """The chunk that opens a choice (chat only)."""
        raise NotImplementedError

    def token_chunk(self, index: int, text: str) -> dict[str, Any]:
        """One token of one choice."""
        raise NotImplementedError

    def finish_chunk(self, index: int, reason: str, matched_stop: str | None) -> dict[str, Any]:
        """The chunk that closes a choice."""
        raise NotImplementedError

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The last chunk before `[DONE]` when `include_usage` is on."""
        chunk = self._chunk([])
        chunk["usage"] = usage(prompt_tokens, completion_tokens)
        return chunk

    def error_event(self, message: str, status: int) -> dict[str, Any]:
        """An error after the first byte, as SGLang streams it."""
        return {"error": {"message": message, "type": status_phrase(status), "param": None, "code": status}}

    def choice(self, index: int, text: str, reason: str | None, matched_stop: str | None) -> dict[str, Any]:
        """One choice of a non-streamed response."""
        raise NotImplementedError

    def response(self, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """A whole non-streamed response."""
        return {
            "id": self.rid,
            "object": self.response_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }


class ChatShape(Shape):
    """`/v1/chat/completions`: `chat.completion` and `chat.completion.chunk`."""

    chunk_object = "chat.completion.chunk"
    response_object = "chat.completion"
    opens_with_role = True

    def _delta(
        self, index: int, delta: dict[str, Any], reason: str | None, matched_stop: str | None = None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        if reason is not None:
            choice["matched_stop"] = matched_stop
        return self._chunk([choice])

    def role_chunk(self, index: int) -> dict[str, Any]:
        return self._delta(index, {"role": "assistant", "content": ""}, None)

    def token_chunk(self, index: int, text: str) -> dict[str, Any]:
        return self._delta(index, {"content": text}, None)

    def finish_chunk(self, index: int, reason: str, matched_stop: str | None) -> dict[str, Any]:
        return self._delta(index, {}, reason, matched_stop)

    def choice(self, index: int, text: str, reason: str | None, matched_stop: str | None) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text, "tool_calls": None},
            "logprobs": None,
            "finish_reason": reason,
            "matched_stop": matched_stop,
        }


class CompletionShape(Shape):
    """`/v1/completions`: `text_completion`, streamed and not."""

    chunk_object = "text_completion"
    response_object = "text_completion"

    def _text(self, index: int, text: str, reason: str | None, matched_stop: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
        if reason is not None:
            choice["matched_stop"] = matched_stop
        return self._chunk([choice])

    def token_chunk(self, index: int, text: str) -> dict[str, Any]:
        return self._text(index, text, None)

    def finish_chunk(self, index: int, reason: str, matched_stop: str | None) -> dict[str, Any]:
        return self._text(index, "", reason, matched_stop)

    def choice(self, index: int, text: str, reason: str | None, matched_stop: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason, "matched_stop": matched_stop}
