"""The generation endpoints: admit a request, plan its choices, run them in the engine, answer as SGLang does.

Admission order: read the body (400 when malformed), then the faults (`unhealthy` → 503, `error_rate` →
`error_status`), then the context check (400), so every refusal happens before any response byte.

What each choice emits (see `plans`): tool calls when `tools` and `tool_choice` ask for them, JSON valid for
the schema when `response_format` asks for it, words otherwise. The wire shapes are in `chunks`; how SGLang
orders them (`serving_chat._generate_chat_stream`, `serving_completions`):

- chat streams open each choice with a role chunk at its first output, send text (or tool-call deltas) as it
  comes, and close every choice with a finish chunk only after all of them are done;
- completions streams carry the finish reason on the chunk with the choice's last text;
- an abort the worker raises with a status is an error event, then the finish chunks of choices already
  done and the usage chunk (when asked for), then `[DONE]`; non-streamed it is an HTTP error;
- an abort without a status (`/abort_request`, `abort_after_tokens` with no `abort_status`) is a normal end
  with `finish_reason: "abort"` and `matched_stop: null`.
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

from .chunks import DONE, ChatWire, CompletionWire, error_sse, sse, tool_call, usage_info
from .engine import EndEvent, Event, FinishEvent, RequestHandle, TokenEvent
from .errors import InjectedFailure, InvalidBody, SimError, Unhealthy, WorkerAbort, stream_error_event
from .logprobs import chat_logprobs, completion_logprobs, token_logprobs
from .model import ChoicePlan
from .plans import plan_choices
from .protocol import Endpoint, GenerationRequest, check_context, parse_chat, parse_completion, parse_json_object
from .sse import CUT, Cut, CutJSONResponse, EventStreamResponse, watch_client
from .state import SimState
from .stats import RequestRecord

PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
HEALTH_POLL_S = 0.05  # how often a queued health probe looks for other requests' tokens
SHUTDOWN_MESSAGE = "The server is shutting down."
ABORT_MESSAGE = "Aborted"  # FINISH_ABORT's default message


async def serve_generation(request: Request, state: SimState, endpoint: Endpoint) -> Response:
    """Answer one chat or completions request; raises `SimError` for every refusal."""
    record = state.stats.open(PATHS[endpoint], request.headers.items())
    try:
        generation, rid = await _admit(request, state, endpoint, record)
        plans = plan_choices(generation, state.config.max_context, reasoning=state.config.reasoning_parser is not None)
    except SimError as exc:
        state.stats.settle(record, exc.outcome, error=exc.message)
        raise
    faults = state.faults.settings
    config = state.config
    handle = RequestHandle(
        rid,
        plans,
        generation.prompt_tokens,
        record=record,
        stall_s=faults.stall_ms / 1000,
        disconnect_detect_s=config.disconnect_detect_ms / 1000,
        prompt_key=generation.prompt_key,
        priority=generation.priority,
        stream=generation.stream,
        abort_after_tokens=faults.abort_after_tokens,
        abort_status=faults.abort_status,
        batch=generation.batch,
    )
    for choice_rid in handle.rids:
        if state.engine.is_active(choice_rid):
            error = InvalidBody(f"Duplicate request ID: {choice_rid}")
            state.stats.settle(record, error.outcome, error=error.message)
            raise error
    answer = _Answer(generation, handle, config.model, cache_report=config.enable_cache_report)
    state.engine.submit(handle)
    if generation.stream:
        events = answer.chat_stream if endpoint == "chat" else answer.completion_stream
        return EventStreamResponse(events(faults.drop_after_tokens), on_disconnect=handle.client_gone)
    return await answer.complete(request, faults.drop_after_tokens)


async def _admit(
    request: Request, state: SimState, endpoint: Endpoint, record: RequestRecord
) -> tuple[GenerationRequest, str]:
    try:
        raw = await request.body()
    except ClientDisconnect as exc:
        raise InvalidBody("The client left before the request body arrived.") from exc
    body = parse_json_object(raw)
    generation = parse_chat(body) if endpoint == "chat" else parse_completion(body)
    rid = generation.rid or uuid.uuid4().hex  # GenerateReqInput's default rid
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
    return generation, rid


def _error_status(handle: RequestHandle) -> int | None:
    """The status of an abort the worker raised itself (SGLang's FINISH_ABORT with a status_code)."""
    if handle.stop_reason == "shutdown":
        return 503
    if handle.stop_reason == "worker_abort":
        return handle.abort_status
    return None


def _error_message(handle: RequestHandle) -> str:
    return SHUTDOWN_MESSAGE if handle.stop_reason == "shutdown" else ABORT_MESSAGE


class _Answer:
    """One response: the request, its engine handle and the wire builder, and the three ways to answer."""

    def __init__(self, generation: GenerationRequest, handle: RequestHandle, served: str, *, cache_report: bool):
        self.generation = generation
        self.handle = handle
        self.plans = handle.choices
        self.model = generation.model or served
        self.created = int(time.time())
        self.cache_report = cache_report
        self.chat = ChatWire(self.model, self.created)
        self.completions = CompletionWire(self.model, self.created)
        self.positions = [0] * len(self.plans)
        """Tokens of each choice sent so far (for logprob positions and offsets)."""
        self.emitted = [0] * len(self.plans)
        """Tokens of each choice received so far (which of them are reasoning)."""
        self.text_offsets = [0] * len(self.plans)

    def usage(self) -> dict[str, Any]:
        handle = self.handle
        cached = handle.cached_tokens if self.cache_report else None
        reasoning = sum(min(plan.reasoning, made) for plan, made in zip(self.plans, handle.generated, strict=True))
        return usage_info(
            handle.prompt_tokens, handle.completion_tokens, cached_tokens=cached, reasoning_tokens=reasoning
        )

    def _finish_reason(self, event: FinishEvent, *, stream: bool) -> tuple[str, str | int | None]:
        plan = self.plans[event.index]
        if plan.tool_call is not None and event.reason == "stop":
            # SGLang's stream keeps the matched end-of-turn token; `_process_tool_calls` clears it.
            return "tool_calls", event.matched_stop if stream else None
        return event.reason, event.matched_stop

    def _logprob_items(self, index: int, pieces: list[str]) -> list[Any]:
        start = self.positions[index]
        self.positions[index] += len(pieces)
        return token_logprobs(self.plans[index].seed_key, start, pieces, max(1, self.generation.top_logprobs))

    def _echo(self, index: int) -> str:
        if not self.generation.echo:
            return ""
        prompts = self.generation.prompts
        return prompts[index // self.generation.n].text if prompts else ""

    async def chat_stream(self, drop_after: int | None) -> AsyncGenerator[bytes | Cut, None]:
        handle, wire = self.handle, self.chat
        opened: set[int] = set()
        finishes: dict[int, FinishEvent] = {}
        last_id = handle.rids[0]
        shown = 0
        while True:
            event = await handle.events.get()
            if isinstance(event, EndEvent):
                break
            last_id = handle.rids[event.index]
            if isinstance(event, FinishEvent) and event.reason == "abort" and (status := _error_status(handle)):
                yield error_sse(stream_error_event(_error_message(handle), status))
                break
            if event.index not in opened:
                opened.add(event.index)
                yield sse(wire.role_chunk(last_id, event.index))
            if isinstance(event, FinishEvent):
                finishes[event.index] = event
                continue
            position = self.emitted[event.index]
            self.emitted[event.index] += 1
            if not event.text:
                continue  # a hidden stop-string token: SGLang sends no empty delta
            if drop_after is not None and shown >= drop_after:
                handle.stop("dropped")
                yield CUT
                return
            shown += 1
            for chunk in self._chat_token_chunks(last_id, event, position):
                yield sse(chunk)
        for index, finish in finishes.items():
            reason, matched = self._finish_reason(finish, stream=True)
            yield sse(wire.finish_chunk(last_id, index, reason, matched))
        if self.generation.include_usage:
            yield sse(wire.usage_chunk(last_id, self.usage()))
        yield DONE

    def _chat_token_chunks(self, chunk_id: str, event: TokenEvent, position: int) -> list[dict[str, Any]]:
        plan = self.plans[event.index]
        if plan.tool_call is not None:
            chunks = []
            if self.positions[event.index] == 0:
                call = tool_call(plan.tool_call.id, 0, plan.tool_call.name, "")
                chunks.append(self.chat.tool_call_chunk(chunk_id, event.index, call))
            self.positions[event.index] += 1
            chunks.append(self.chat.tool_call_chunk(chunk_id, event.index, tool_call(None, 0, None, event.text)))
            return chunks
        logprobs = None
        if self.generation.logprobs:
            logprobs = chat_logprobs(self._logprob_items(event.index, [event.text]), self.generation.top_logprobs)
        if position < plan.reasoning and self.generation.separate_reasoning:
            return [self.chat.reasoning_chunk(chunk_id, event.index, event.text, logprobs)]
        return [self.chat.content_chunk(chunk_id, event.index, event.text, logprobs)]

    async def completion_stream(self, drop_after: int | None) -> AsyncGenerator[bytes | Cut, None]:
        handle, wire = self.handle, self.completions
        last_id = handle.rids[0]
        first: set[int] = set()
        shown = 0
        pending: Event | None = None
        while True:
            event = pending if pending is not None else await handle.events.get()
            pending = None
            if isinstance(event, EndEvent):
                break
            last_id = handle.rids[event.index]
            if isinstance(event, FinishEvent) and event.reason == "abort" and (status := _error_status(handle)):
                yield error_sse(stream_error_event(_error_message(handle), status))
                break
            text, finish = "", None
            if isinstance(event, TokenEvent):
                if drop_after is not None and shown >= drop_after:
                    handle.stop("dropped")
                    yield CUT
                    return
                shown += 1
                text = event.text
                # The engine queues a choice's last token and its finish in one step: they make one chunk.
                if not handle.events.empty():
                    follower = handle.events.get_nowait()
                    if isinstance(follower, FinishEvent) and follower.index == event.index:
                        finish = follower
                    else:
                        pending = follower
            else:
                finish = event
            if not text and finish is None:
                continue
            echo = self._echo(event.index) if event.index not in first else ""
            first.add(event.index)
            logprobs = None
            if self.generation.logprobs and isinstance(event, TokenEvent):
                items = self._logprob_items(event.index, [text])
                logprobs = completion_logprobs(items, self.generation.top_logprobs, self.text_offsets[event.index])
            self.text_offsets[event.index] += len(echo + text)
            reason = finish.reason if finish is not None else None
            matched = finish.matched_stop if finish is not None else None
            yield sse(wire.chunk(last_id, wire.choice(event.index, echo + text, reason, matched, logprobs=logprobs)))
        if self.generation.include_usage:
            yield sse(wire.usage_chunk(last_id, self.usage()))
        yield DONE

    async def complete(self, request: Request, drop_after: int | None) -> Response:
        handle = self.handle
        # Non-streamed requests notice a departed client the same late way streamed ones do.
        watcher = asyncio.ensure_future(watch_client(request.receive, handle.client_gone))
        texts: list[list[str]] = [[] for _ in self.plans]
        finishes: dict[int, FinishEvent] = {}
        received = 0
        try:
            while True:
                event = await handle.events.get()
                if isinstance(event, EndEvent):
                    break
                if isinstance(event, FinishEvent):
                    finishes[event.index] = event
                    continue
                if drop_after is not None and received >= drop_after:
                    handle.stop("dropped")
                    return CutJSONResponse(self._response(texts, finishes))
                received += 1
                texts[event.index].append(event.text)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        status = _error_status(handle)
        if status is not None:
            raise WorkerAbort(_error_message(handle), status=status)
        return JSONResponse(self._response(texts, finishes))

    def _response(self, texts: list[list[str]], finishes: dict[int, FinishEvent]) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for index, plan in enumerate(self.plans):
            finish = finishes.get(index)
            reason, matched = self._finish_reason(finish, stream=False) if finish is not None else (None, None)
            pieces = texts[index]
            text = "".join(pieces)
            if self.generation.endpoint == "completions":
                logprobs = None
                if self.generation.logprobs:
                    items = self._logprob_items(index, pieces)
                    logprobs = completion_logprobs(items, self.generation.top_logprobs, len(self._echo(index)))
                choices.append(
                    self.completions.choice(index, self._echo(index) + text, reason, matched, logprobs=logprobs)
                )
            elif plan.tool_call is not None and reason == "tool_calls":
                call = tool_call(plan.tool_call.id, 0, plan.tool_call.name, text)
                choices.append(self.chat.choice(index, "", reason, matched, tool_calls=[call]))
            else:
                logprobs = None
                if self.generation.logprobs:
                    logprobs = chat_logprobs(self._logprob_items(index, pieces), self.generation.top_logprobs)
                reasoning = None
                if plan.reasoning and self.generation.separate_reasoning:
                    reasoning, text = "".join(pieces[: plan.reasoning]), "".join(pieces[plan.reasoning :])
                choices.append(
                    self.chat.choice(index, text, reason, matched, logprobs=logprobs, reasoning_content=reasoning)
                )
        wire = self.chat if self.generation.endpoint == "chat" else self.completions
        return wire.response(self.handle.rids[0], choices, self.usage())


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
