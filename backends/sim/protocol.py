"""What a generation request asks for: the request bodies, read into one `GenerationRequest`.

Unknown fields (SGLang's `priority`, `ignore_eos`, `chat_template_kwargs`, ...) are accepted and ignored
unless listed here. Wrong types and bad values raise `BadRequest`, never a bare exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from .errors import BadRequest, ContextLengthExceeded
from .model import chat_prompt_tokens, completion_prompt_tokens

Endpoint = Literal["chat", "completions"]
MAX_N = 128


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """The parts of a chat or completions body that the simulator acts on."""

    endpoint: Endpoint
    prompt_key: str
    """Canonical prompt text: seeds the generated words."""
    prompt_tokens: int
    rid: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False
    priority: int | None = None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or `BadRequest`."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def parse_chat(body: dict[str, Any]) -> GenerationRequest:
    """Read a `/v1/chat/completions` body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.")
    contents: list[str] = []
    key_parts: list[tuple[str, str]] = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{position}] must be an object with a string 'role'.")
        text = _content_text(message.get("content"), position)
        contents.append(text)
        key_parts.append((message["role"], text))
    max_tokens = _optional_int(body, "max_completion_tokens", minimum=0)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", minimum=0)
    return _common(
        body,
        endpoint="chat",
        prompt_key=json.dumps(key_parts, ensure_ascii=False),
        prompt_tokens=chat_prompt_tokens(contents),
        max_tokens=max_tokens,
    )


def parse_completion(body: dict[str, Any]) -> GenerationRequest:
    """Read a `/v1/completions` body (one prompt: a string or a list of token ids)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one is just one prompt
    if isinstance(prompt, str):
        key, tokens = prompt, completion_prompt_tokens(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_int(item) for item in prompt):
        key, tokens = "ids:" + ",".join(str(item) for item in prompt), len(prompt)
    else:
        raise BadRequest("'prompt' must be a string or a list of token ids (batches are not simulated).")
    return _common(
        body,
        endpoint="completions",
        prompt_key=key,
        prompt_tokens=tokens,
        max_tokens=_optional_int(body, "max_tokens", minimum=0),
    )


def check_context(request: GenerationRequest, max_context: int) -> None:
    """Refuse a prompt that does not fit, in SGLang's words; `max_tokens` counts when given."""
    prompt = request.prompt_tokens
    if prompt > max_context:
        raise ContextLengthExceeded(
            f"The input ({prompt} tokens) is longer than the model's context length ({max_context} tokens)."
        )
    if request.max_tokens is not None and prompt + request.max_tokens > max_context:
        total = prompt + request.max_tokens
        raise ContextLengthExceeded(
            f"Requested token count exceeds the model's maximum context length of {max_context} tokens. "
            f"You requested a total of {total} tokens: {prompt} tokens from the input messages and "
            f"{request.max_tokens} tokens for the completion. Please reduce the number of tokens in the input "
            "messages or the completion to fit within the limit."
        )


def _common(
    body: dict[str, Any], *, endpoint: Endpoint, prompt_key: str, prompt_tokens: int, max_tokens: int | None
) -> GenerationRequest:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object.")
    include_usage = bool(options.get("include_usage")) if options else False
    rid = body.get("rid")
    if rid is not None and (not isinstance(rid, str) or not rid):
        raise BadRequest("'rid' must be a non-empty string.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string.")
    n = _optional_int(body, "n", minimum=1)
    if n is not None and n > MAX_N:
        raise BadRequest(f"'n' must be at most {MAX_N}.")
    priority = body.get("priority")
    return GenerationRequest(
        endpoint=endpoint,
        prompt_key=prompt_key,
        prompt_tokens=prompt_tokens,
        rid=rid,
        model=model,
        max_tokens=max_tokens,
        stop=_stop(body.get("stop")),
        n=n or 1,
        stream=bool(stream),
        include_usage=include_usage,
        ignore_eos=body.get("ignore_eos") is True,
        priority=priority if _is_int(priority) else None,
    )


def _content_text(content: Any, position: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise BadRequest(f"messages[{position}].content parts must be objects.")
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise BadRequest(f"messages[{position}].content text parts need a string 'text'.")
                texts.append(text)
        return "".join(texts)
    raise BadRequest(f"messages[{position}].content must be a string, a list of parts, or null.")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise BadRequest("'stop' must be a string or a list of strings.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_int(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        raise BadRequest(f"'{name}' must be an integer >= {minimum}, got {value!r}.")
    return int(value)
