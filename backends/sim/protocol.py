"""What a generation request asks for: the request bodies, read into one `GenerationRequest`.

Unknown fields (`chat_template_kwargs`, `temperature`, ...) are accepted and ignored unless listed here.
Wrong types raise `InvalidBody` (SGLang's pydantic validation), bad values `BadRequest`, and the tools
checks of SGLang's `_validate_request` `InvalidRequest`; never a bare exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from .errors import BadRequest, ContextLengthExceeded, InvalidBody, InvalidRequest
from .model import chat_prompt_tokens, completion_prompt_tokens

Endpoint = Literal["chat", "completions"]
MAX_N = 128
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt: its canonical text (seeds the output, keys the prefix cache) and its token count."""

    key: str
    tokens: int
    text: str = ""
    """What `echo` repeats (completions only)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One function tool: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


ToolChoice = Literal["none", "auto", "required"] | str
"""`none`, `auto`, `required`, or the name of the one function to call."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """The parts of a chat or completions body that the simulator acts on."""

    endpoint: Endpoint
    prompt_key: str
    """Canonical prompt text of the first prompt: seeds the generated words."""
    prompt_tokens: int
    """Prompt tokens over all prompts (a completions batch counts each prompt once)."""
    prompts: tuple[Prompt, ...] = ()
    """Every prompt (completions may send a list); empty means one prompt, `prompt_key`."""
    batch: bool = False
    """The prompt came as a list (even of one): SGLang's `GenerateReqInput` is then a batch and expands the rid."""
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"
    tool_turn_done: bool = False
    """The last message is a tool result: with `tool_choice: auto` the model answers in text."""
    response_format: dict[str, Any] | None = None
    """The JSON schema a `response_format` asks for (`json_object`: any object)."""
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    echo: bool = False
    separate_reasoning: bool = True
    """SGLang's extension: with a reasoning parser, reasoning goes to `reasoning_content` (else `content`)."""
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
    """The body as a JSON object, or `InvalidBody`."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidBody(f"Malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidBody("The request body must be a JSON object.")
    return body


def parse_chat(body: dict[str, Any]) -> GenerationRequest:
    """Read a `/v1/chat/completions` body."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidBody("'messages' must be a list.")
    if not messages:
        raise InvalidRequest("Messages cannot be empty.")
    contents: list[str] = []
    key_parts: list[tuple[str, str]] = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidBody(f"messages[{position}] must be an object with a string 'role'.")
        text = _content_text(message.get("content"), position)
        contents.append(text)
        key_parts.append((message["role"], text))
    max_tokens = _optional_int(body, "max_completion_tokens", minimum=0)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", minimum=0)
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    top = _optional_int(body, "top_logprobs", minimum=0)
    if top is not None and top > MAX_TOP_LOGPROBS:
        raise InvalidBody(f"'top_logprobs' must be at most {MAX_TOP_LOGPROBS}.")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidBody("'logprobs' must be a boolean.")
    key = json.dumps(key_parts, ensure_ascii=False)
    tokens = chat_prompt_tokens(contents)
    return _common(
        body,
        endpoint="chat",
        prompts=(Prompt(key, tokens),),
        max_tokens=max_tokens,
        tools=tools,
        tool_choice=tool_choice,
        tool_turn_done=messages[-1].get("role") == "tool",
        response_format=_response_format(body.get("response_format")),
        logprobs=bool(logprobs),
        top_logprobs=(top or 0) if logprobs else 0,
        separate_reasoning=body.get("separate_reasoning") is not False,
    )


def parse_completion(body: dict[str, Any]) -> GenerationRequest:
    """Read a `/v1/completions` body: one prompt (a string or token ids) or a list of them."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(i) for i in prompt)):
        items: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(i, str | list) for i in prompt):
        items = list(prompt)
    else:
        raise InvalidBody("'prompt' must be a string, a list of token ids, or a non-empty list of either.")
    prompts = tuple(_completion_prompt(item) for item in items)
    logprobs = _optional_int(body, "logprobs", minimum=0)
    if logprobs is not None and logprobs > MAX_TOP_LOGPROBS:
        raise InvalidBody(f"'logprobs' must be at most {MAX_TOP_LOGPROBS}.")
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise InvalidBody("'echo' must be a boolean.")
    return _common(
        body,
        endpoint="completions",
        prompts=prompts,
        batch=len(items) > 1 or prompt is not items[0],
        max_tokens=_optional_int(body, "max_tokens", minimum=0),
        response_format=_response_format(body.get("response_format")),
        logprobs=logprobs is not None,
        top_logprobs=logprobs or 0,
        echo=bool(echo),
    )


def _completion_prompt(item: Any) -> Prompt:
    if isinstance(item, str):
        return Prompt(item, completion_prompt_tokens(item), item)
    if isinstance(item, list) and item and all(_is_int(i) for i in item):
        return Prompt("ids:" + ",".join(str(i) for i in item), len(item), "")
    raise InvalidBody("each prompt must be a string or a non-empty list of token ids.")


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
    body: dict[str, Any],
    *,
    endpoint: Endpoint,
    prompts: tuple[Prompt, ...],
    max_tokens: int | None,
    **features: Any,
) -> GenerationRequest:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidBody("'stream' must be a boolean.")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidBody("'stream_options' must be an object.")
    include_usage = bool(options.get("include_usage")) if options else False
    rid = body.get("rid")
    if rid is not None and (not isinstance(rid, str) or not rid):
        raise InvalidBody("'rid' must be a non-empty string.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidBody("'model' must be a string.")
    n = _optional_int(body, "n", minimum=1)
    if n is not None and n > MAX_N:
        raise BadRequest(f"'n' must be at most {MAX_N}.")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise InvalidBody("'seed' must be an integer.")
    priority = body.get("priority")
    return GenerationRequest(
        endpoint=endpoint,
        prompt_key=prompts[0].key,
        prompt_tokens=sum(p.tokens for p in prompts),
        prompts=prompts,
        rid=rid,
        model=model,
        max_tokens=max_tokens,
        stop=_stop(body.get("stop")),
        n=n or 1,
        stream=bool(stream),
        include_usage=include_usage,
        ignore_eos=body.get("ignore_eos") is True,
        priority=priority if _is_int(priority) else None,
        seed=seed,
        **features,
    )


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidBody("'tools' must be a list.")
    tools: list[Tool] = []
    for position, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidBody(f"tools[{position}] must be {{'type': 'function', 'function': {{'name': ...}}}}.")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"Tool {position} function has invalid 'parameters' schema: not an object")
        tools.append(Tool(function["name"], parameters or {"type": "object", "properties": {}}))
    return tuple(tools)


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    if value is None:
        return "auto" if tools else "none"
    if isinstance(value, str):
        choice = value.lower()
        if choice not in ("none", "auto", "required"):
            raise InvalidBody("'tool_choice' must be none, auto, required, or a named function.")
        if choice == "required" and not tools:
            raise InvalidRequest("Tools cannot be empty if tool choice is set to required.")
        return choice
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidBody("'tool_choice' must be none, auto, required, or {'type': 'function', 'function': {...}}.")
    if not tools:
        raise InvalidRequest("Tools cannot be empty if tool choice is set to a specific tool.")
    name: str = function["name"]
    if all(tool.name != name for tool in tools):
        raise InvalidRequest(f"Tool '{name}' not found in tools list.")
    return name


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidBody("'response_format' must have type text, json_object or json_schema.")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return {"type": "object"}
    spec = value.get("json_schema")
    schema = spec.get("schema", spec.get("schema_")) if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidBody("'response_format.json_schema.schema' must be an object.")
    return schema


def _content_text(content: Any, position: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise InvalidBody(f"messages[{position}].content parts must be objects.")
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidBody(f"messages[{position}].content text parts need a string 'text'.")
                texts.append(text)
        return "".join(texts)
    raise InvalidBody(f"messages[{position}].content must be a string, a list of parts, or null.")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise InvalidBody("'stop' must be a string or a list of strings.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_int(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise InvalidBody(f"'{name}' must be an integer, got {value!r}.")
    if value < minimum:
        raise BadRequest(f"'{name}' must be an integer >= {minimum}, got {value!r}.")
    return int(value)
