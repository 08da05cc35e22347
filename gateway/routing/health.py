"""Active health probes and load polling, one pair of tasks per worker.

- Probes: `GET /health_generate` (a real one-token generation, so a stuck scheduler fails it) every
  `probe_interval_s` with `probe_timeout_s`. A 200 is a success for the worker's breaker, anything else or no
  answer a failure. While a breaker is open no probe is sent; the next one goes out the moment it turns
  half-open, so a worker that is back is back within `open_s` plus one probe.
- Load: every `load_poll_s`, running + queued requests from `/v1/loads`, `/get_load` on older workers, or
  `/metrics` (see `load`). A failed poll forgets the figure, so balancing falls back to this gateway's own
  in-flight count rather than trusting a stale number.

Passive failure counting happens in `Router.release`; both feed the same breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import httpx

from ..breaker import BreakerState, Clock
from ..settings import HealthSettings
from .load import LoadReader
from .workers import Worker

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, http: httpx.AsyncClient, settings: HealthSettings, clock: Clock = time.monotonic) -> None:
        self.http = http
        self.settings = settings
        self._clock = clock
        self._workers: dict[int, Worker] = {}
        self._tasks: dict[int, list[asyncio.Task[None]]] = {}
        self.loads = LoadReader(http, settings.probe_timeout_s)
        self._running = False

    def track(self, workers: Iterable[Worker]) -> None:
        """Watch exactly these workers: start tasks for new ones, stop those for workers no longer listed."""
        wanted = {id(w): w for w in workers}
        for key in list(self._workers):
            if key not in wanted:
                gone = self._workers.pop(key)
                if all(other.url != gone.url for other in wanted.values()):
                    self.loads.forget([gone.url])
                for task in self._tasks.pop(key, []):
                    task.cancel()
        for key, w in wanted.items():
            if key not in self._workers:
                self._workers[key] = w
                if self._running:
                    self._spawn(key, w)

    async def start(self) -> None:
        self._running = True
        for key, w in self._workers.items():
            if key not in self._tasks:
                self._spawn(key, w)

    async def close(self) -> None:
        self._running = False
        tasks = [t for ts in self._tasks.values() for t in ts]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, key: int, w: Worker) -> None:
        self._tasks[key] = [
            asyncio.create_task(self._probe_loop(w), name=f"probe {w.url}"),
            asyncio.create_task(self._load_loop(w), name=f"load {w.url}"),
        ]

    async def probe(self, w: Worker) -> bool:
        """One `/health_generate` probe, its result given to the worker's breaker."""
        try:
            resp = await self.http.get(f"{w.url}/health_generate", timeout=self.settings.probe_timeout_s)
            ok = resp.status_code == 200
        except httpx.HTTPError as exc:
            log.debug("probe %s failed: %r", w.url, exc)
            ok = False
        before = w.state
        if ok:
            w.breaker.record_success()
        else:
            w.breaker.record_failure()
        if w.state != before:
            log.warning("worker %s (pool %s): %s -> %s after a probe", w.url, w.pool, before, w.state)
        return ok

    async def poll_load(self, w: Worker) -> int | None:
        """Refresh `w.polled_load` from the worker's load endpoint (see `load.LoadReader`)."""
        load = await self.loads.read(w.url)
        w.set_polled_load(load, self._clock())
        return load

    async def _probe_loop(self, w: Worker) -> None:
        while True:
            reopen = w.breaker.reopens_in()
            if reopen > 0:
                await asyncio.sleep(reopen)
                continue
            try:
                await self.probe(w)
            except Exception:  # a bug here must not end the worker's probing for good
                log.exception("probe of %s raised", w.url)
            reopen = w.breaker.reopens_in()
            await asyncio.sleep(reopen if reopen > 0 else self.settings.probe_interval_s)

    async def _load_loop(self, w: Worker) -> None:
        while True:
            if w.breaker.state is not BreakerState.OPEN:
                try:
                    await self.poll_load(w)
                except Exception:
                    log.exception("load poll of %s raised", w.url)
            await asyncio.sleep(self.settings.load_poll_s)
