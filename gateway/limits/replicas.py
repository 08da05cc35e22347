"""Replica heartbeats: how many gateway replicas share the limits, for the fail-open shares.

Each replica adds itself to a sorted set in Redis every `heartbeat_s`, scored with the server's time, and drops
members silent for `STALE_BEATS` periods (heartbeat.lua). The count it reads back is kept here; while Redis is
down the last count seen is used, and 1 if none was ever seen (a lone replica must not starve itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

STALE_BEATS = 3  # a replica missing this many heartbeats no longer counts


class Heartbeat:
    """Runs `beat` every `period_s` in a background task and remembers the replica count it returns."""

    def __init__(self, period_s: float, beat: Callable[[], Awaitable[int | None]]) -> None:
        self.period_s = period_s
        self.live_replicas = 1
        self._beat = beat
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def stale_after_s(self) -> float:
        return STALE_BEATS * self.period_s

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="limiter-heartbeat")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Both a flag and a cancel: on Python 3.11, redis-py can swallow a cancel that lands while a command is
        # being sent (asyncio.wait_for's race), and the loop would beat on forever. `wait` (not `await task`)
        # keeps a cancel of stop() itself from being mistaken for the task's own.
        self._stopping.set()
        task.cancel()
        await asyncio.wait({task})

    async def beat_now(self) -> None:
        try:
            count = await self._beat()
        except Exception:
            # The beat reports Redis failures itself; anything reaching here is a bug, and must not end the loop.
            log.exception("limiter heartbeat failed")
            return
        if count is not None:
            self.live_replicas = max(1, count)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.beat_now()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period_s):
                    await self._stopping.wait()
