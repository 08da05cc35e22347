"""The simulated scheduler: admits up to `max_running` requests, queues the rest, and paces their tokens.

Each request runs in its own task, apart from the HTTP response that reads its events. That split is
what lets the simulator behave like SGLang when a client leaves: the response stops, but generation goes
on until the disconnect is "noticed" `disconnect_detect_ms` later. Only `/abort_request` stops a request
at once, so the gateway's tests can tell whether the gateway called it.

A request holds one slot whatever its `n`; its choices advance together, one token each per step. As in
SGLang (`io_struct._normalize_rid`), choice `i` of an `n > 1` request answers to its own rid `<rid>_i`:
`/abort_request` stops that choice alone, and the base rid matches nothing. Load figures count choices,
since SGLang runs each `rid_i` as a request of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .cache import PrefixCache
from .metrics import SimMetrics
from .model import ChoicePlan, FinishReason, TimingModel
from .stats import RequestRecord, Settled, SimStats

StopReason = Literal["abort", "disconnected", "dropped", "shutdown", "worker_abort"]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Choice `index` generated one token; `text` may be empty (part of a matched stop string)."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """Choice `index` ended."""

    index: int
    reason: FinishReason
    matched_stop: str | int | None = None


@dataclass(frozen=True, slots=True)
class EndEvent:
    """The request left the engine; always the last event."""

    status: Settled
    prompt_tokens: int
    completion_tokens: int


Event = TokenEvent | FinishEvent | EndEvent


class RequestHandle:
    """One request inside the engine: its plan, its event queue, and the ways to stop it."""

    def __init__(
        self,
        rid: str,
        choices: Sequence[ChoicePlan],
        prompt_tokens: int,
        *,
        record: RequestRecord | None,
        stall_s: float = 0.0,
        disconnect_detect_s: float = 0.0,
        prompt_key: str = "",
        priority: int | None = None,
        stream: bool = False,
        abort_after_tokens: int | None = None,
        abort_status: int | None = None,
        batch: bool = False,
    ) -> None:
        self.rid = rid
        self.choices = tuple(choices)
        single = len(self.choices) == 1 and not batch
        self.rids = (rid,) if single else tuple(f"{rid}_{i}" for i in range(len(self.choices)))
        """The rid of each choice: SGLang expands a rid into `rid_0 ... rid_{n-1}` when `n > 1` or the prompt is a
        list (a batch, even of one prompt)."""
        self.choice_stops: list[StopReason | None] = [None] * len(self.choices)
        self.abort_after_tokens = abort_after_tokens
        self.abort_status = abort_status
        """Set when the worker itself aborted the request with an error status (SGLang's `FINISH_ABORT`)."""
        self.prompt_tokens = prompt_tokens
        self.prompt_key = prompt_key
        """Canonical prompt text: what the prefix cache matches."""
        self.priority = priority
        self.stream = stream
        self.cached_tokens = 0
        """Prompt tokens found in the prefix cache at admission (SGLang's `cached_tokens`)."""
        self.admitted = False
        self.record = record
        self.stall_s = stall_s
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.stop_reason: StopReason | None = None
        self.finished = False
        self.generated = [0] * len(self.choices)
        self.ended = [False] * len(self.choices)
        self.arrived_at = time.monotonic()
        self._disconnect_detect_s = disconnect_detect_s
        self._waker: asyncio.Future[None] | None = None
        self.admission: asyncio.Future[bool] | None = None
        self._detect_timer: asyncio.TimerHandle | None = None

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far, over all choices."""
        return sum(self.generated)

    def stop(self, reason: StopReason) -> bool:
        """Stop the request at its next step; the first reason wins. False when it had already ended."""
        if self.finished or self.stop_reason is not None:
            return False
        self.stop_reason = reason
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)
        if self.admission is not None and not self.admission.done():
            self.admission.set_result(False)
        return True

    def stop_choice(self, index: int, reason: StopReason) -> bool:
        """Stop one choice at the next step (`/abort_request` naming `rid_i`); False when it had ended."""
        if self.finished or self.ended[index] or self.choice_stops[index] is not None:
            return False
        self.choice_stops[index] = reason
        if all(ended or stop is not None for ended, stop in zip(self.ended, self.choice_stops, strict=True)):
            self.stop(reason)
        return True

    def client_gone(self) -> None:
        """The client left: stop after `disconnect_detect_s`, unless it ends or is aborted first."""
        if self.finished or self._detect_timer is not None:
            return
        loop = asyncio.get_running_loop()
        self._detect_timer = loop.call_later(self._disconnect_detect_s, self.stop, "disconnected")

    async def pause_until(self, deadline: float) -> bool:
        """Wait until `deadline` (loop time); True when the request was stopped meanwhile (or before).

        One future and one timer, as cheap as `asyncio.sleep`: this runs once per token of every request.
        """
        if self.stop_reason is not None:
            return True
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()
        timer = loop.call_at(deadline, _wake, waker)
        self._waker = waker
        try:
            await waker
        finally:
            timer.cancel()
            self._waker = None
        return self.stop_reason is not None

    def mark_finished(self) -> None:
        """Called once by the engine when the request leaves it."""
        self.finished = True
        if self._detect_timer is not None:
            self._detect_timer.cancel()


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


class Engine:
    """Runs `RequestHandle`s under the slot limit and the timing model, and settles them in `SimStats`."""

    def __init__(
        self,
        *,
        max_running: int,
        kv_capacity_tokens: int,
        timing: TimingModel,
        stats: SimStats,
        metrics: SimMetrics | None = None,
        cache: PrefixCache | None = None,
        priority_scheduling: bool = False,
    ) -> None:
        self.max_running = max_running
        # SGLang's --enable-priority-scheduling: a freed slot goes to the waiting request with the largest priority
        # (its default order; no preemption of running requests is simulated), the oldest first among equals.
        self.priority_scheduling = priority_scheduling
        self.kv_capacity_tokens = kv_capacity_tokens
        self.timing = timing
        self.stats = stats
        self.metrics = metrics
        self.cache = cache
        self.running = 0
        self.kv_used_tokens = 0
        self.queued_prompt_tokens = 0
        self.last_output_at = 0.0
        """`time.monotonic()` of the last token any request produced: the scheduler's heartbeat."""
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._waiter_priority: dict[asyncio.Future[bool], int] = {}
        self._visible: dict[str, RequestHandle] = {}
        self._live: set[RequestHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def token_usage(self) -> float:
        """Share of the KV pool in use, 0..1."""
        return min(1.0, self.kv_used_tokens / self.kv_capacity_tokens)

    def running_by_priority(self) -> dict[int | None, int]:
        """Running requests (choices) per priority (health probes included, as in SGLang's running batch)."""
        return _count_priorities(h for h in self._live if h.admitted)

    def queued_by_priority(self) -> dict[int | None, int]:
        """Queued requests (choices) per priority."""
        return _count_priorities(h for h in self._live if not h.admitted and h.admission is not None)

    def active_rids(self) -> list[str]:
        """Rids of requests queued or running (health probes excluded)."""
        return list(self._visible)

    def is_active(self, rid: str) -> bool:
        """Whether a request (or choice) with this rid is queued or running."""
        return rid in self._visible

    def submit(self, handle: RequestHandle) -> None:
        """Start a request; its events arrive on `handle.events`, ending with an `EndEvent`."""
        if handle.record is not None:
            for rid in handle.rids:
                self._visible[rid] = handle
        self._live.add(handle)
        task = asyncio.get_running_loop().create_task(self._run(handle), name=f"sim-request-{handle.rid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def abort(self, rid: str) -> bool:
        """`/abort_request {"rid": ...}`: stop that request (or that choice) now. False when none runs."""
        handle = self._visible.get(rid)
        if handle is None:
            return False
        if len(handle.rids) == 1:
            return handle.stop("abort")
        return handle.stop_choice(handle.rids.index(rid), "abort")

    def abort_all(self) -> int:
        """`/abort_request {"abort_all": true}`: stop every request; returns how many were stopped."""
        return self.stop_all("abort")

    def stop_all(self, reason: StopReason) -> int:
        """Stop every request (health probes end on their own); returns how many were stopped."""
        return sum(handle.stop(reason) for handle in set(self._visible.values()))

    async def aclose(self) -> None:
        """Stop every request (server shutdown) and wait for their tasks."""
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, handle: RequestHandle) -> None:
        admitted = False
        try:
            admitted = await self._admit(handle)
            if admitted:
                await self._generate(handle)
        except asyncio.CancelledError:
            handle.stop("shutdown")
            raise
        finally:
            if admitted:
                self._release(handle)
            self._settle(handle)

    async def _admit(self, handle: RequestHandle) -> bool:
        if handle.stop_reason is not None:
            return False
        if self.running < self.max_running and not any(not waiter.done() for waiter in self._waiters):
            self.running += 1
            handle.admitted = True
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        handle.admission = waiter
        self._waiters.append(waiter)
        if self.priority_scheduling:
            self._waiter_priority[waiter] = handle.priority or 0
        self.queued_prompt_tokens += handle.prompt_tokens
        try:
            handle.admitted = await waiter
            return handle.admitted
        except asyncio.CancelledError:
            # Cancelled right after a slot was handed over: give it back, or it leaks.
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._hand_over_slot()
            raise
        finally:
            handle.admission = None
            self.queued_prompt_tokens -= handle.prompt_tokens
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            self._waiter_priority.pop(waiter, None)

    def _hand_over_slot(self) -> None:
        # A freed slot goes straight to the oldest waiter, so the running count never dips and re-rises.
        if self.priority_scheduling and self._waiter_priority:
            live = [w for w in self._waiters if not w.done()]
            if live:
                first = max(live, key=lambda w: self._waiter_priority.get(w, 0))  # max keeps the oldest of equals
                self._waiters.remove(first)
                first.set_result(True)
                return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.running -= 1

    def _release(self, handle: RequestHandle) -> None:
        handle.admitted = False
        self.kv_used_tokens -= handle.prompt_tokens + handle.completion_tokens
        self._hand_over_slot()

    async def _generate(self, handle: RequestHandle) -> None:
        if handle.record is not None:
            handle.record.status = "running"
        self.kv_used_tokens += handle.prompt_tokens
        if self.cache is not None and handle.record is not None:
            handle.cached_tokens = self.cache.match(handle.prompt_key, handle.prompt_tokens)
            if handle.record is not None:
                handle.record.cached_tokens = handle.cached_tokens
        loop = asyncio.get_running_loop()
        # Prefill computes only what the cache did not hold.
        uncached = handle.prompt_tokens - handle.cached_tokens
        deadline = loop.time() + self.timing.ttft_s(uncached) + handle.stall_s
        if await handle.pause_until(deadline):
            return
        if self.cache is not None and handle.record is not None:
            self.cache.insert(handle.prompt_key)
        if self.metrics is not None and handle.record is not None:
            self.metrics.observe_ttft(
                time.monotonic() - handle.arrived_at, priority=handle.priority, stream=handle.stream
            )
        step = 0
        while True:
            produced = self._step(handle, step)
            self.last_output_at = time.monotonic()
            self.kv_used_tokens += produced
            if self.metrics is not None:
                self.metrics.observe_tokens(produced)
            if all(handle.ended):
                return
            step += 1
            # Pace by deadlines so the work of a step does not stretch the ITL; never schedule in the past,
            # so a loop that fell behind resumes at the model's pace instead of bursting to catch up.
            deadline = max(deadline + self.timing.itl_s(self.running), loop.time())
            if await handle.pause_until(deadline):
                return

    def _step(self, handle: RequestHandle, step: int) -> int:
        produced = 0
        for index, plan in enumerate(handle.choices):
            if handle.ended[index]:
                continue
            if handle.choice_stops[index] is not None:
                handle.ended[index] = True
                handle.events.put_nowait(FinishEvent(index, "abort"))
                continue
            if handle.abort_after_tokens is not None and handle.generated[index] >= handle.abort_after_tokens:
                handle.stop("worker_abort")
                return produced
            if step < plan.tokens:
                handle.events.put_nowait(TokenEvent(index, plan.pieces[step]))
                handle.generated[index] += 1
                produced += 1
            if handle.generated[index] >= plan.tokens:
                handle.ended[index] = True
                handle.events.put_nowait(FinishEvent(index, plan.finish_reason, plan.matched_stop))
        if handle.record is not None:
            handle.record.completion_tokens = handle.completion_tokens
        return produced

    def _settle(self, handle: RequestHandle) -> None:
        handle.mark_finished()
        self._live.discard(handle)
        for rid in handle.rids:
            if self._visible.get(rid) is handle:
                del self._visible[rid]
        status: Settled = "completed"
        reasons = [plan.finish_reason for plan in handle.choices]
        if any(stop is not None for stop in handle.choice_stops):
            status = "aborted"
            for index, stop in enumerate(handle.choice_stops):
                if stop is not None:
                    reasons[index] = "abort"
        if not all(handle.ended):
            status = _STATUS_BY_STOP[handle.stop_reason or "shutdown"]
            for index, ended in enumerate(handle.ended):
                if not ended:
                    reasons[index] = "abort"
                    handle.events.put_nowait(FinishEvent(index, "abort"))
        if handle.record is not None:
            handle.record.completion_tokens = handle.completion_tokens
            finish = "abort" if "abort" in reasons else (reasons[0] if reasons else None)
            error = _ERROR_BY_STOP.get(handle.stop_reason) if status != "completed" else None
            self.stats.settle(handle.record, status, finish_reason=finish, error=error)
            if self.metrics is not None:
                self.metrics.observe_finished(
                    time.monotonic() - handle.arrived_at,
                    priority=handle.priority,
                    stream=handle.stream,
                    prompt_tokens=handle.prompt_tokens,
                    cached_tokens=handle.cached_tokens,
                    completion_tokens=handle.completion_tokens,
                    aborted=status == "aborted",
                )
        handle.events.put_nowait(EndEvent(status, handle.prompt_tokens, handle.completion_tokens))


def _count_priorities(handles: Iterable[RequestHandle]) -> dict[int | None, int]:
    counts: dict[int | None, int] = {}
    for handle in handles:
        live = sum(not ended for ended in handle.ended)
        if live:
            counts[handle.priority] = counts.get(handle.priority, 0) + live
    return counts


_STATUS_BY_STOP: dict[StopReason, Settled] = {
    "abort": "aborted",
    "worker_abort": "failed",
    "disconnected": "disconnected",
    "dropped": "failed",
    "shutdown": "failed",
}
_ERROR_BY_STOP: dict[StopReason | None, str] = {
    "dropped": "connection cut by the drop_after_tokens fault",
    "shutdown": "server shut down",
    "worker_abort": "aborted by the worker (abort_after_tokens fault)",
}
