"""Readers: one validated request body of each agent API → the `Intake` the pipeline plans, admits and relays.

The texts handed over for counting are chat-shaped messages (`{"role", "content"}`), whatever the API calls them,
so every API is counted by the same counter (`routing/tokens.py`, or a worker's `/v1/tokenize`):
- Responses: `instructions` as a system message, then each input item (messages as they are; a function call as
  its name and arguments; a function call's output as a tool message);
- Anthropic Messages: `system`, then each message, with tool results and tool-use inputs counted as text;
- embeddings: each input as a completions prompt; the tokenizer endpoints charge nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sparsegate.gateway.agent_protocol import EmbeddingRequest, MessagesCountRequest, MessagesRequest, ResponsesRequest
from sparsegate.gateway.routing.tokens import Prompt


@dataclass
class Intake:
    """What the pipeline needs from one request body."""

    model: str
    payload: dict[str, Any]  # forwarded to the worker as the client sent it (plus the gateway's own fields)
    stream: bool = False
    max_tokens: int | None = None  # the completion budget asked for; 0 for requests that generate nothing
    messages: list[dict[str, Any]] | None = None
    prompt: Prompt | None = None
    tools: Any = None
    previous_response_id: str | None = None  # Responses: follow this stored response to its worker
    store: bool = False  # Responses: remember which worker holds this one
    extra: dict[str, Any] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def responses_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    for item in body.input:
        kind = item.get("type", "message")
        if kind == "function_call":
            messages.append(
                {"role": "assistant", "content": f"{_text(item.get('name', ''))}{_text(item.get('arguments', ''))}"}
            )
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": _text(item.get("output", ""))})
        elif kind == "message" or "role" in item:
            messages.append({"role": str(item.get("role", "user")), "content": item.get("content")})
        else:  # reasoning items, item references, ...: count what text they carry
            messages.append({"role": "assistant", "content": _text({k: v for k, v in item.items() if k != "id"})})
    return messages


def read_responses(body: ResponsesRequest) -> Intake:
    return Intake(
        model=body.model,
        payload=body.model_dump(exclude_unset=True),
        stream=body.stream,
        max_tokens=body.max_output_tokens,
        messages=responses_messages(body),
        tools=body.tools,
        previous_response_id=body.previous_response_id,
        store=body.store,
    )


def _block_texts(content: Any) -> Any:
    """Anthropic content as chat content: text blocks as they are, tool inputs and results as text."""
    if not isinstance(content, list):
        return content
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block.get("text", ""))})
        elif kind == "tool_use":
            parts.append({"type": "text", "text": _text(block.get("name", "")) + _text(block.get("input", {}))})
        elif kind == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                parts.extend(p for p in (_block_texts(inner) or []) if isinstance(p, dict))
            elif inner is not None:
                parts.append({"type": "text", "text": _text(inner)})
        elif kind == "thinking":
            parts.append({"type": "text", "text": _text(block.get("thinking", ""))})
    return parts


def messages_messages(body: MessagesCountRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.system is not None:
        messages.append({"role": "system", "content": _block_texts(body.system)})
    for message in body.messages:
        messages.append({"role": message.role, "content": _block_texts(message.content)})
    return messages


def read_messages(body: MessagesRequest) -> Intake:
    return Intake(
        model=body.model,
        payload=body.model_dump(exclude_unset=True, by_alias=True),
        stream=body.stream,
        max_tokens=body.max_tokens,
        messages=messages_messages(body),
        tools=body.tools,
    )


def read_count_tokens(body: MessagesCountRequest) -> Intake:
    return Intake(model=body.model, payload=body.model_dump(exclude_unset=True, by_alias=True), max_tokens=0)


def read_embeddings(body: EmbeddingRequest) -> Intake:
    prompt: Prompt = body.input
    return Intake(model=body.model, payload=body.model_dump(exclude_unset=True), max_tokens=0, prompt=prompt)
