"""OpenAI's Responses API as SGLang 0.5.23 serves it (`serving_responses.py`), run on the simulated engine.

    POST /v1/responses                   stream (typed `event:` SSE, no `[DONE]`) or whole; `background` with `store`
    GET  /v1/responses/{id}              a stored response
    POST /v1/responses/{id}/cancel       a queued or running background response stops; a finished one is returned as is

The worker behaves as one started with `--enable-response-store`: stored responses (and the conversation that led
to each, for `previous_response_id`) live in this process's memory only, which is why a gateway must send
follow-ups to the worker that holds them. The response id is the request's `request_id` (`resp_<hex>`, minted when
absent), and it is also the rid the engine runs under, so `/abort_request` can name it.

Errors use the nested envelope SGLang's Responses handler writes: `{"error": {"message", "type", "param",
"code": <status>}}`. Tools: with `tool_choice` "required" or a named function, the answer is one `function_call`
item whose arguments carry the generated words; otherwise it is a text message.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .agents_run import Finished, Run, open_record, start_run, tokens
from .agents_tokens import content_text
from .errors import BadRequest, SimError
from .protocol import parse_json_object
from .sse import CUT, Cut, EventStreamResponse
from .state import SimState
from .stats import RequestRecord

PATH = "/v1/responses"
ARGS_OPEN, ARGS_CLOSE = '{"input": "', '"}'


class ResponsesError(Exception):
    """An error answered in the Responses handler's own envelope."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param

    def response(self) -> JSONResponse:
        error: dict[str, Any] = {"message": self.message, "type": "invalid_request_error", "param": self.param}
        body = {"error": error | {"code": self.status}}
        return JSONResponse(body, status_code=self.status)


class ResponseStore:
    """Stored responses and the messages each one ended with (its history for `previous_response_id`)."""

    def __init__(self) -> None:
        self.responses: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[tuple[str, str]]] = {}
        self.background: dict[str, asyncio.Task[None]] = {}


def _input_messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    value = body.get("input")
    if isinstance(value, str):
        return [("user", value)]
    if not isinstance(value, list) or not value:
        raise ResponsesError("'input' must be a string or a non-empty list of items.", param="input")
    out: list[tuple[str, str]] = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise ResponsesError(f"input[{position}] must be an object.", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str):
                raise ResponsesError(f"input[{position}] needs a string 'role'.", param="input")
            try:
                out.append((role, content_text(item.get("content"), f"input[{position}].content")))
            except BadRequest as exc:
                raise ResponsesError(exc.message, param="input") from None
        elif kind == "function_call_output":
            out.append(("tool", str(item.get("output", ""))))
        elif kind == "function_call":
            out.append(("assistant", f"{item.get('name', '')}({item.get('arguments', '')})"))
    return out


def _tool_target(body: dict[str, Any]) -> str | None:
    """The function the answer must call, or None for a text answer."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if choice == "required" and tools and isinstance(tools[0].get("name"), str):
        return str(tools[0]["name"])
    return None


def _int_or_none(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ResponsesError(f"'{name}' must be a positive integer.", param=name)
    return value


Remember = Callable[[dict[str, Any]], None]


class _Answer:
    """One response being built: its skeleton, and the output item once generation ends."""

    def __init__(self, body: dict[str, Any], rid: str, model: str, created: int) -> None:
        self.body, self.rid, self.model, self.created = body, rid, model, created
        self.target = _tool_target(body)
        self.item_id = f"fc_{uuid.uuid4().hex}" if self.target else f"msg_{uuid.uuid4().hex}"
        self.call_id = f"call_{uuid.uuid4().hex[:24]}"
        self.text = ""

    def arguments(self) -> str:
        return ARGS_OPEN + json.dumps(self.text)[1:-1] + ARGS_CLOSE

    def item(self, status: str) -> dict[str, Any]:
        if self.target is not None:
            args = self.arguments() if status == "completed" else ""
            return {"arguments": args, "call_id": self.call_id, "name": self.target, "type": "function_call"} | {
                "id": self.item_id,
                "status": status,
            }
        content = [] if status == "in_progress" else [self.part(self.text)]
        return {"id": self.item_id, "type": "message", "role": "assistant", "content": content, "status": status} | {
            "phase": "final_answer"
        }

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": None}

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        body = self.body
        only_text = bool(output) and all(o.get("type") == "message" for o in output)
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "output": output,
            "status": status,
            "usage": usage,
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature"),
            "text": body.get("text") or ({"format": {"type": "text"}} if only_text else None),
            "top_p": body.get("top_p"),
            "truncation": body.get("truncation", "disabled"),
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def final(self, end: Finished) -> dict[str, Any]:
        status = "incomplete" if end.reason == "length" else "completed"
        if end.stop_reason is not None:
            status = "cancelled" if end.stop_reason == "abort" else "failed"
        usage = {
            "input_tokens": end.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": end.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": end.prompt_tokens + end.completion_tokens,
        }
        return self.response(status, [self.item("completed")], usage)


async def create_response(request: Request, state: SimState, store: ResponseStore) -> Response:
    """`POST /v1/responses`."""
    record = open_record(state, PATH, request.headers.items())
    try:
        body = parse_json_object(await request.body())
        return await _create(body, state, store, record)
    except ResponsesError as exc:
        state.stats.settle(record, "rejected", error=exc.message)
        return exc.response()
    except BadRequest as exc:
        state.stats.settle(record, "rejected", error=exc.message)
        return ResponsesError(exc.message).response()


async def _create(body: dict[str, Any], state: SimState, store: ResponseStore, record: RequestRecord) -> Response:
    model = body.get("model")
    if model is not None and model != state.config.model:
        raise ResponsesError(f"The model '{model}' does not exist", status=404, param="model")
    rid = body.get("request_id") or f"resp_{uuid.uuid4().hex}"
    if not isinstance(rid, str):
        raise ResponsesError("'request_id' must be a string.", param="request_id")
    stream, background, keep = body.get("stream") is True, body.get("background") is True, body.get("store", True)
    if background and not keep:
        raise ResponsesError("background=true requires store=true.", param="store")
    history: list[tuple[str, str]] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str) or not previous.startswith("resp_"):
            raise ResponsesError(
                f"Invalid 'response_id': '{previous}'. Expected an ID that begins with 'resp'.", param="response_id"
            )
        if previous not in store.responses:
            raise ResponsesError(f"Response with id '{previous}' not found.", status=404, param="response_id")
        history = list(store.history.get(previous, []))
    instructions = body.get("instructions")
    messages = ([("system", instructions)] if isinstance(instructions, str) else []) + history
    messages += _input_messages(body)
    run = start_run(
        state,
        record,
        rid=rid,
        model=model,
        messages=messages,
        max_tokens=_int_or_none(body, "max_output_tokens"),
        stream=stream,
    )
    answer = _Answer(body, rid, model or state.config.model, run.created)

    def remember(final: dict[str, Any]) -> None:
        if keep and store.responses.get(rid, {}).get("status") != "cancelled":
            store.responses[rid] = final
            store.history[rid] = [*messages, ("assistant", answer.text)]

    if background and not stream:
        store.responses[rid] = answer.response("queued", [], None)
        task = asyncio.get_running_loop().create_task(_background(run, answer, remember, store))
        store.background[rid] = task
        task.add_done_callback(lambda _: store.background.pop(rid, None))
        return JSONResponse(store.responses[rid])
    if stream:
        return EventStreamResponse(_events(run, answer, remember), on_disconnect=run.handle.client_gone)
    final = await _collect(run, answer)
    remember(final)
    return JSONResponse(final)


async def _collect(run: Run, answer: _Answer) -> dict[str, Any]:
    async for piece in tokens(run):
        if isinstance(piece, Finished):
            return answer.final(piece)
        answer.text += piece
    raise SimError("The generation ended without a result.")


async def _background(run: Run, answer: _Answer, remember: Remember, store: ResponseStore) -> None:
    stored = store.responses[answer.rid]
    if stored["status"] == "queued":
        stored["status"] = "in_progress"
    remember(await _collect(run, answer))


async def _events(run: Run, answer: _Answer, remember: Remember) -> AsyncGenerator[bytes | Cut, None]:
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    where = {"output_index": 0, "item_id": answer.item_id}
    opened = answer.response("in_progress", [], None)
    yield event("response.created", response=opened)
    yield event("response.in_progress", response=opened)
    started, first, shown = False, True, 0
    async for piece in tokens(run):
        if isinstance(piece, Finished):
            if piece.stop_reason is not None and piece.stop_reason != "abort":
                failed = answer.response("failed", [], None)
                failed["error"] = {"code": "server_error", "message": f"The request stopped: {piece.stop_reason}."}
                yield event("response.failed", response=failed)
                return
            if not started:
                yield event("response.output_item.added", output_index=0, item=answer.item("in_progress"))
            if answer.target is not None:
                args = answer.arguments()
                yield event("response.function_call_arguments.delta", **where, delta=ARGS_OPEN if first else ARGS_CLOSE)
                if first:
                    yield event("response.function_call_arguments.delta", **where, delta=ARGS_CLOSE)
                yield event("response.function_call_arguments.done", **where, arguments=args, name=answer.target)
            else:
                if not started:
                    yield event("response.content_part.added", **where, content_index=0, part=answer.part(""))
                yield event("response.output_text.done", **where, content_index=0, text=answer.text, logprobs=[])
                yield event("response.content_part.done", **where, content_index=0, part=answer.part(answer.text))
            yield event("response.output_item.done", output_index=0, item=answer.item("completed"))
            final = answer.final(piece)
            remember(final)
            yield event(f"response.{final['status']}", response=final)
            return
        if not started:
            started = True
            yield event("response.output_item.added", output_index=0, item=answer.item("in_progress"))
            if answer.target is None:
                yield event("response.content_part.added", **where, content_index=0, part=answer.part(""))
        if run.cut_now(shown):
            yield CUT
            return
        shown += 1
        answer.text += piece
        if answer.target is not None:
            # The deltas concatenate to `arguments()`: its opening, each piece escaped, then its closing.
            delta = json.dumps(piece)[1:-1]
            yield event("response.function_call_arguments.delta", **where, delta=ARGS_OPEN + delta if first else delta)
            first = False
        else:
            yield event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])


def retrieve_response(store: ResponseStore, response_id: str) -> Response:
    """`GET /v1/responses/{id}`."""
    try:
        return JSONResponse(_stored(store, response_id))
    except ResponsesError as exc:
        return exc.response()


async def cancel_response(state: SimState, store: ResponseStore, response_id: str) -> Response:
    """`POST /v1/responses/{id}/cancel`: stop a queued or running response; a finished one is returned unchanged."""
    try:
        stored = _stored(store, response_id)
    except ResponsesError as exc:
        return exc.response()
    if stored["status"] in ("queued", "in_progress"):
        stored["status"] = "cancelled"
        state.engine.abort(response_id)
        task = store.background.get(response_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)  # as SGLang, answer once the run has ended
    return JSONResponse(stored)


def _stored(store: ResponseStore, response_id: str) -> dict[str, Any]:
    if not response_id.startswith("resp_"):
        raise ResponsesError(
            f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'.", param="response_id"
        )
    stored = store.responses.get(response_id)
    if stored is None:
        raise ResponsesError(f"Response with id '{response_id}' not found.", status=404, param="response_id")
    return stored
