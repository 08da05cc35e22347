"""The generation endpoints: admit a request, run it in the engine, and answer streamed or whole.

Admission order: read the body (400 when malformed), then the faults (`unhealthy` → 503, `error_rate` →
`error_status`), then the context check (400), so every refusal happens before any response byte.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from .chunks import DONE, ChatShape, CompletionShape, Shape, sse
from .engine import EndEvent, Event, FinishEvent, RequestHandle
from .errors import BadRequest, InjectedFailure, SimError, Unhealthy
from .model import ChoicePlan, plan_choice
from .protocol import Endpoint, GenerationRequest, check_context, parse_chat, parse_completion, parse_json_object
from .sse import CUT, Cut, CutJSONResponse, EventStreamResponse, watch_client
from .state import SimState
from .stats import RequestRecord

PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
RID_PREFIXES: dict[Endpoint, str] = {"chat": "chatcmpl", "completions": "cmpl"}
HEALTH_POLL_S = 0.05  # how often a queued health probe looks for other requests' tokens


async def serve_generation(request: Request, state: SimState, endpoint: Endpoint) -> Response:
    """Answer one chat or completions request; raises `SimError` for every refusal."""
    record = state.stats.open(PATHS[endpoint], request.headers.items())
    try:
        generation, rid = await _admit(request, state, endpoint, record)
    except SimError as exc:
        state.stats.settle(record, exc.outcome, error=exc.message)
        raise
    faults = state.faults.settings
    config = state.config
    room = config.max_context - generation.prompt_tokens
    plans = [
        plan_choice(
            generation.prompt_key,
            index,
            max_tokens=generation.max_tokens,
            room=room,
            stop=generation.stop,
            ignore_eos=generation.ignore_eos,
        )
        for index in range(generation.n)
    ]
    handle = RequestHandle(
        rid,
        plans,
        generation.prompt_tokens,
        record=record,
        stall_s=faults.stall_ms / 1000,
        disconnect_detect_s=config.disconnect_detect_ms / 1000,
    )
    shape_class = ChatShape if endpoint == "chat" else CompletionShape
    shape = shape_class(
        rid,
        generation.model or config.model,
        int(time.time()),
        include_usage=generation.stream and generation.include_usage,
    )
    state.engine.submit(handle)
    if generation.stream:
        return EventStreamResponse(_stream(handle, shape, faults.drop_after_tokens), on_disconnect=handle.client_gone)
    return await _complete(request, handle, shape, faults.drop_after_tokens)


async def _admit(
    request: Request, state: SimState, endpoint: Endpoint, record: RequestRecord
) -> tuple[GenerationRequest, str]:
    try:
        raw = await request.body()
    except ClientDisconnect as exc:
        raise BadRequest("The client left before the request body arrived.") from exc
    body = parse_json_object(raw)
    generation = parse_chat(body) if endpoint == "chat" else parse_completion(body)
    rid = generation.rid or f"{RID_PREFIXES[endpoint]}-{uuid.uuid4().hex}"
    record.rid = rid
    record.model = generation.model
    record.stream = generation.stream
    record.prompt_tokens = generation.prompt_tokens
    record.max_tokens = generation.max_tokens
    record.priority = generation.priority
    faults = state.faults.settings
    if faults.unhealthy:
        raise Unhealthy("The server is unhealthy (simulated fault).")
    status = state.faults.draw_error(faults)
    if status is not None:
        raise InjectedFailure(f"Injected failure (simulated fault, status {status}).", status=status)
    check_context(generation, state.config.max_context)
    if state.engine.is_active(rid):
        raise BadRequest(f"Duplicate request ID: {rid}")
    return generation, rid


async def _stream(handle: RequestHandle, shape: Shape, drop_after: int | None) -> AsyncGenerator[bytes | Cut, None]:
    opened: set[int] = set()
    shown = 0
    while True:
        event = await handle.events.get()
        if isinstance(event, EndEvent):
            if handle.stop_reason == "shutdown":
                yield sse(shape.error_event("The server is shutting down.", 503))
            elif shape.include_usage:
                yield sse(shape.usage_chunk(event.prompt_tokens, event.completion_tokens))
            yield DONE
            return
        if shape.opens_with_role and event.index not in opened:
            opened.add(event.index)
            yield sse(shape.role_chunk(event.index))
        if isinstance(event, FinishEvent):
            yield sse(shape.finish_chunk(event.index, event.reason, event.matched_stop))
        elif event.text:
            if drop_after is not None and shown >= drop_after:
                handle.stop("dropped")
                yield CUT
                return
            shown += 1
            yield sse(shape.token_chunk(event.index, event.text))


async def _complete(request: Request, handle: RequestHandle, shape: Shape, drop_after: int | None) -> Response:
    # Non-streamed requests notice a departed client the same late way streamed ones do.
    watcher = asyncio.ensure_future(watch_client(request.receive, handle.client_gone))
    texts: list[list[str]] = [[] for _ in handle.choices]
    finishes: dict[int, FinishEvent] = {}
    received = 0
    try:
        while True:
            event = await handle.events.get()
            if isinstance(event, EndEvent):
                end = event
                break
            if isinstance(event, FinishEvent):
                finishes[event.index] = event
                continue
            if drop_after is not None and received >= drop_after:
                handle.stop("dropped")
                partial = _choices(shape, handle.choices, texts, finishes)
                return CutJSONResponse(shape.response(partial, handle.prompt_tokens, handle.completion_tokens))
            received += 1
            texts[event.index].append(event.text)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if handle.stop_reason == "shutdown":
        raise SimError("The server is shutting down.", status=503)
    choices = _choices(shape, handle.choices, texts, finishes)
    return JSONResponse(shape.response(choices, end.prompt_tokens, end.completion_tokens))


def _choices(
    shape: Shape, plans: tuple[ChoicePlan, ...], texts: list[list[str]], finishes: dict[int, FinishEvent]
) -> list[dict[str, Any]]:
    choices: list[dict[str, Any]] = []
    for index in range(len(plans)):
        finish = finishes.get(index)
        reason = finish.reason if finish is not None else None
        choices.append(shape.choice(index, "".join(texts[index]), reason, finish.matched_stop if finish else None))
    return choices


async def probe_health(state: SimState) -> bool:
    """`/health_generate`: one real token through the engine (queue, TTFT, stall) within the timeout.

    As in SGLang, any token the engine produces after the probe started proves it alive, so a busy
    worker whose queue delays the probe still answers 200; a stalled one does not.
    """
    if state.faults.settings.unhealthy:
        return False
    started = time.monotonic()
    handle = RequestHandle(
        f"HEALTH_CHECK_{uuid.uuid4().hex}",
        [ChoicePlan(("ok",), "length")],
        prompt_tokens=1,
        record=None,
        stall_s=state.faults.settings.stall_ms / 1000,
    )
    state.engine.submit(handle)
    try:
        async with asyncio.timeout(state.config.health_timeout_s):
            while state.engine.last_output_at <= started:
                if isinstance(await _next_event(handle, HEALTH_POLL_S), EndEvent):
                    break
    except TimeoutError:
        return False
    finally:
        handle.stop("abort")  # a no-op once it has ended
    return state.engine.last_output_at > started


async def _next_event(handle: RequestHandle, wait_s: float) -> Event | None:
    try:
        async with asyncio.timeout(wait_s):
            return await handle.events.get()
    except TimeoutError:
        return None
