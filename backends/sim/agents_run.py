"""What the agent APIs (Responses, Anthropic Messages) share: admission, a run in the engine, and its text.

Both APIs are chat underneath, as in SGLang: the prompt is a list of (role, text) messages counted by
`model.chat_prompt_tokens`, and the words come from `model.plan_choice`, one token each. Admission follows
`serving`: faults first (`unhealthy` → 503, `error_rate` → `error_status`), then the context check, all before
any response byte.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from .engine import EndEvent, FinishEvent, RequestHandle
from .errors import InjectedFailure, SimError, Unhealthy
from .model import FinishReason, chat_prompt_tokens, plan_choice
from .protocol import GenerationRequest, check_context
from .state import SimState
from .stats import RequestRecord


@dataclass(slots=True)
class Run:
    """One admitted generation: the engine handle and the stats record it settles."""

    handle: RequestHandle
    record: RequestRecord
    drop_after: int | None = None  # the `drop_after_tokens` fault: a stream is cut after this many tokens
    created: int = field(default_factory=lambda: int(time.time()))

    def cut_now(self, shown: int) -> bool:
        """True (and the run stopped) when the fault cuts the stream before its next token."""
        if self.drop_after is None or shown < self.drop_after:
            return False
        self.handle.stop("dropped")
        return True


@dataclass(slots=True)
class Finished:
    """How a run ended: its reason (None when stopped early) and the token counts."""

    reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | None


def open_record(state: SimState, path: str, headers: Iterable[tuple[str, str]]) -> RequestRecord:
    return state.stats.open(path, headers)


def refuse(state: SimState, record: RequestRecord, exc: SimError) -> SimError:
    """Settle a refused request in the stats and hand the error back for raising."""
    state.stats.settle(record, exc.outcome, error=exc.message)
    return exc


def start_run(
    state: SimState,
    record: RequestRecord,
    *,
    rid: str,
    model: str | None,
    messages: list[tuple[str, str]],
    max_tokens: int | None,
    stream: bool,
    stop: tuple[str, ...] = (),
) -> Run:
    """Check faults and context, then submit a chat-shaped generation; raises a settled `SimError` on refusal."""
    prompt_tokens = chat_prompt_tokens([text for _, text in messages])
    record.rid, record.model, record.stream = rid, model, stream
    record.prompt_tokens, record.max_tokens = prompt_tokens, max_tokens
    generation = GenerationRequest(
        endpoint="chat",
        prompt_key=json.dumps(messages, ensure_ascii=False),
        prompt_tokens=prompt_tokens,
        rid=rid,
        model=model,
        max_tokens=max_tokens,
        stop=stop,
        stream=stream,
    )
    try:
        faults = state.faults.settings
        if faults.unhealthy:
            raise Unhealthy("The server is unhealthy (simulated fault).")
        status = state.faults.draw_error(faults)
        if status is not None:
            raise InjectedFailure(f"Injected failure (simulated fault, status {status}).", status=status)
        check_context(generation, state.config.max_context)
    except SimError as exc:
        raise refuse(state, record, exc) from None
    plan = plan_choice(
        generation.prompt_key,
        0,
        max_tokens=max_tokens,
        room=state.config.max_context - prompt_tokens,
        stop=stop,
    )
    handle = RequestHandle(
        rid,
        [plan],
        prompt_tokens,
        record=record,
        stall_s=faults.stall_ms / 1000,
        disconnect_detect_s=state.config.disconnect_detect_ms / 1000,
    )
    state.engine.submit(handle)
    return Run(handle, record, faults.drop_after_tokens)


async def tokens(run: Run) -> AsyncIterator[str | Finished]:
    """Each generated piece of text as it comes, then one `Finished`."""
    reason: FinishReason | None = None
    while True:
        event = await run.handle.events.get()
        if isinstance(event, EndEvent):
            yield Finished(reason, event.prompt_tokens, event.completion_tokens, run.handle.stop_reason)
            return
        if isinstance(event, FinishEvent):
            reason = event.reason
        elif event.text:
            yield event.text
