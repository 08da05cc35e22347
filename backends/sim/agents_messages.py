"""Anthropic's Messages API as SGLang 0.5.23 serves it (`entrypoints/anthropic/`), run on the simulated engine.

    POST /v1/messages                 stream (Anthropic's named events) or whole
    POST /v1/messages/count_tokens    {"input_tokens": n}: the prompt as the chat template renders it

Errors use Anthropic's envelope `{"type": "error", "error": {"type", "message"}}` with SGLang's status → type map.
A stream is `message_start` (with the prompt's `input_tokens`, as SGLang's continuous usage gives it), one
`content_block_start`/`content_block_delta`*/`content_block_stop` per block, `message_delta` (stop reason and
`output_tokens`), `message_stop`; a failure after the start is an `error` event followed by `message_stop`.
Tools: `tool_choice` "any" or a named tool makes the answer one `tool_use` block whose input carries the words.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .agents_run import Finished, Run, open_record, start_run, tokens
from .agents_tokens import content_text
from .errors import BadRequest, SimError
from .model import chat_prompt_tokens
from .protocol import parse_json_object
from .sse import CUT, Cut, EventStreamResponse
from .state import SimState

PATH = "/v1/messages"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "request_timeout_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def anthropic_error(status: int, message: str) -> JSONResponse:
    """Anthropic's error envelope for a status."""
    kind = ERROR_TYPES.get(status, "api_error")
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)


def _messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("'model' is required.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.")
    out: list[tuple[str, str]] = []
    system = body.get("system")
    if system is not None:
        out.append(("system", content_text(system, "system")))
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
            raise BadRequest(f"messages.{position}: 'role' must be 'user', 'assistant' or 'system'.")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    texts.append(content_text(block.get("content"), f"messages.{position}.content"))
                elif isinstance(block, dict) and block.get("type") == "tool_use":
                    texts.append(json.dumps(block.get("input", {})))
            content = [{"type": "text", "text": t} for t in texts] + [b for b in content if isinstance(b, dict)]
        out.append((message["role"], content_text(content, f"messages.{position}.content")))
    return out


def _tool_target(body: dict[str, Any]) -> str | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("name"), str)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if isinstance(choice, dict) and choice.get("type") == "any" and tools:
        return str(tools[0]["name"])
    return None


async def count_tokens(request: Request) -> Response:
    """`POST /v1/messages/count_tokens`."""
    try:
        body = parse_json_object(await request.body())
        messages = _messages(body)
    except BadRequest as exc:
        return anthropic_error(400, exc.message)
    return JSONResponse({"input_tokens": chat_prompt_tokens([text for _, text in messages])})


async def create_message(request: Request, state: SimState) -> Response:
    """`POST /v1/messages`."""
    record = open_record(state, PATH, request.headers.items())
    try:
        body = parse_json_object(await request.body())
        messages = _messages(body)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
            raise BadRequest("max_tokens: must be a positive integer.")
        stop = body.get("stop_sequences") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop_sequences: must be a list of strings.")
    except BadRequest as exc:
        state.stats.settle(record, "rejected", error=exc.message)
        return anthropic_error(400, exc.message)
    stream = body.get("stream") is True
    try:
        run = start_run(
            state,
            record,
            rid=f"msg_{uuid.uuid4().hex}",
            model=body["model"],
            messages=messages,
            max_tokens=max_tokens,
            stream=stream,
            stop=tuple(stop),
        )
    except SimError as exc:
        return anthropic_error(exc.status_code, exc.message)
    answer = _Answer(body, run)
    if stream:
        return EventStreamResponse(_events(run, answer), on_disconnect=run.handle.client_gone)
    async for piece in tokens(run):
        if isinstance(piece, Finished):
            if piece.stop_reason == "shutdown":
                return anthropic_error(503, "The server is shutting down.")
            return JSONResponse(answer.message(piece))
        answer.text += piece
    return anthropic_error(500, "Internal server error")


class _Answer:
    def __init__(self, body: dict[str, Any], run: Run) -> None:
        self.model = str(body["model"])
        self.id = run.handle.rid
        self.target = _tool_target(body)
        self.tool_id = f"toolu_{uuid.uuid4().hex[:24]}"
        self.text = ""

    def block(self, final: bool) -> dict[str, Any]:
        if self.target is not None:
            tool_input = {"input": self.text} if final else {}
            return {"type": "tool_use", "id": self.tool_id, "name": self.target, "input": tool_input}
        return {"type": "text", "text": self.text if final else ""}

    def stop_reason(self, end: Finished) -> str:
        return "tool_use" if self.target is not None else STOP_REASONS.get(str(end.reason), "end_turn")

    def message(self, end: Finished) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [self.block(True)],
            "model": self.model,
            "stop_reason": self.stop_reason(end),
            "usage": {"input_tokens": end.prompt_tokens, "output_tokens": end.completion_tokens},
        }


def _event(kind: str, **fields: Any) -> bytes:
    payload = json.dumps({"type": kind, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode()


async def _events(run: Run, answer: _Answer) -> AsyncGenerator[bytes | Cut, None]:
    usage = {"input_tokens": run.handle.prompt_tokens, "output_tokens": 0}
    start = {"id": answer.id, "type": "message", "role": "assistant", "content": [], "model": answer.model} | {
        "usage": usage
    }
    yield _event("message_start", message=start)
    yield _event("content_block_start", index=0, content_block=answer.block(False))
    first, shown = True, 0
    async for piece in tokens(run):
        if isinstance(piece, Finished):
            if piece.stop_reason == "shutdown":
                yield _event("content_block_stop", index=0)
                yield _event("error", error={"type": "api_error", "message": "The server is shutting down."})
                yield _event("message_stop")
                return
            if answer.target is not None:
                yield _event("content_block_delta", index=0, delta=_json_delta('"}' if not first else '{"input": ""}'))
            yield _event("content_block_stop", index=0)
            delta = {"stop_reason": answer.stop_reason(piece)}
            yield _event("message_delta", delta=delta, usage={"output_tokens": piece.completion_tokens})
            yield _event("message_stop")
            return
        if run.cut_now(shown):
            yield CUT
            return
        shown += 1
        answer.text += piece
        if answer.target is not None:
            # The partial JSON concatenates to the tool input: opening, each piece escaped, closing brace at the end.
            escaped = json.dumps(piece)[1:-1]
            yield _event("content_block_delta", index=0, delta=_json_delta(('{"input": "' if first else "") + escaped))
            if first:
                first = False
        else:
            yield _event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})


def _json_delta(partial: str) -> dict[str, str]:
    return {"type": "input_json_delta", "partial_json": partial}
