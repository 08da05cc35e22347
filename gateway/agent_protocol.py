"""Request models of the agent-facing APIs: OpenAI Responses, Anthropic Messages, embeddings and the tokenizer.

As in `protocol.py`, every model allows unknown fields (`extra="allow"`), so SGLang's and the vendors' newer fields
reach the worker untouched; the gateway checks only what it acts on (model, stream, budgets, the texts it counts) and
forwards the body as the client sent it. Validation failures are 400s in the API's own envelope.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sparsegate.gateway.protocol import ChatMessage


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponsesRequest(_Open):
    """`POST /v1/responses`."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, pattern=r"^resp_[A-Za-z0-9_-]{1,200}$")
    store: bool = True
    stream: bool = False
    background: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)


class AnthropicMessage(_Open):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesCountRequest(_Open):
    """`POST /v1/messages/count_tokens`."""

    model: str = Field(min_length=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesRequest(MessagesCountRequest):
    """`POST /v1/messages`."""

    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None


class EmbeddingRequest(_Open):
    """`POST /v1/embeddings`."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class TokenizeRequest(_Open):
    """`POST /v1/tokenize`: exactly one of `prompt` and `messages`."""

    model: str = Field(min_length=1)
    prompt: str | list[str] | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(_Open):
    """`POST /v1/detokenize`."""

    model: str = Field(min_length=1)
    tokens: list[int] | list[list[int]]
    skip_special_tokens: bool = True
