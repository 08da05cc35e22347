"""Active health probes and load polling, one pair of tasks per worker.

- Probes: `GET /health_generate` (a real one-token generation, so a stuck scheduler fails it) every
  `probe_interval_s` with `probe_timeout_s`. A 200 is a success for the worker's breaker, anything else or no
  answer a failure. While a breaker is open no probe is sent; the next one goes out the moment it turns
  half-open, so a worker that is back is back within `open_s` plus one probe.
- Load: `GET /get_load` every `load_poll_s` (SGLang answers a list of per-DP-rank entries whose `num_reqs` is
  running + queued); a worker without it (404) is polled on `/metrics` instead, summing
  `sglang:num_running_reqs` and `sglang:num_queue_reqs`. A failed poll forgets the figure, so balancing falls
  back to this gateway's own in-flight count rather than trusting a stale number.

Passive failure counting happens in `Router.release`; both feed the same breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..breaker import BreakerState, Clock
from ..settings import HealthSettings
from .workers import Worker

log = logging.getLogger(__name__)

_LOAD_METRICS = ("sglang:num_running_reqs", "sglang:num_queue_reqs")


def parse_get_load(body: Any) -> int | None:
    """Requests running + queued from a `/get_load` answer, across its shapes (per-rank list, or one dict)."""
    entries = body if isinstance(body, list) else [body]
    total = 0
    seen = False
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("num_reqs"), int | float):
            total += int(entry["num_reqs"])
            seen = True
        elif isinstance(entry.get("running"), int | float) or isinstance(entry.get("waiting"), int | float):
            total += int(entry.get("running") or 0) + int(entry.get("waiting") or 0)
            seen = True
        elif isinstance(entry.get("load"), int | float):
            total += int(entry["load"])
            seen = True
    return total if seen else None


def parse_metrics(text: str) -> int | None:
    """Requests running + queued from SGLang's Prometheus text (summed over label sets, e.g. DP ranks)."""
    total = 0.0
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _LOAD_METRICS and math.isfinite(sample.value):
                total += sample.value
                seen = True
    return round(total) if seen else None


class HealthMonitor:
    def __init__(self, http: httpx.AsyncClient, settings: HealthSettings, clock: Clock = time.monotonic) -> None:
        self.http = http
        self.settings = settings
        self._clock = clock
        self._workers: dict[int, Worker] = {}
        self._tasks: dict[int, list[asyncio.Task[None]]] = {}
        self._use_metrics: set[int] = set()
        self._running = False

    def track(self, workers: Iterable[Worker]) -> None:
        """Watch exactly these workers: start tasks for new ones, stop those for workers no longer listed."""
        wanted = {id(w): w for w in workers}
        for key in list(self._workers):
            if key not in wanted:
                del self._workers[key]
                self._use_metrics.discard(key)
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
            asyncio.create_task(self._load_loop(key, w), name=f"load {w.url}"),
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

    async def poll_load(self, w: Worker, key: int | None = None) -> int | None:
        """Refresh `w.polled_load` from `/get_load`, or `/metrics` for workers that lack it."""
        key = id(w) if key is None else key
        load: int | None = None
        try:
            if key not in self._use_metrics:
                resp = await self.http.get(f"{w.url}/get_load", timeout=self.settings.probe_timeout_s)
                if resp.status_code in (404, 405):
                    self._use_metrics.add(key)
                elif resp.status_code == 200:
                    load = parse_get_load(resp.json())
            if key in self._use_metrics:
                resp = await self.http.get(f"{w.url}/metrics", timeout=self.settings.probe_timeout_s)
                if resp.status_code == 200:
                    load = parse_metrics(resp.text)
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("load poll %s failed: %r", w.url, exc)
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

    async def _load_loop(self, key: int, w: Worker) -> None:
        while True:
            if w.breaker.state is not BreakerState.OPEN:
                try:
                    await self.poll_load(w, key)
                except Exception:
                    log.exception("load poll of %s raised", w.url)
            await asyncio.sleep(self.settings.load_poll_s)
