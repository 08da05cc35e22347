"""How much a worker can run and how much it holds: `max_running_requests`, running and waiting requests.

SGLang 0.5.23 answers all three in one call: `GET /v1/loads?include=core` has, per DP rank, `num_running_reqs`,
`num_waiting_reqs` and `max_running_requests` (`managers/load_snapshot.py`). A worker whose answer lacks the
maximum (or is older and serves no `/v1/loads`) is asked `GET /get_server_info` for `max_running_requests` once,
and the figure is kept. A figure that cannot be read is None: the gate then does not hold that pool's requests back
(it cannot know when the pool is full), and the worker's own queue takes the overflow as before.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

LOADS_PATH = "/v1/loads?include=core"
SERVER_INFO_PATH = "/get_server_info"


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One worker's requests right now, summed over its DP ranks."""

    running: int
    waiting: int
    max_running: int | None  # None when the answer did not say

    @property
    def held(self) -> int:
        return self.running + self.waiting


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return round(value)


def parse_loads(body: Any) -> WorkerLoad | None:
    """Running, waiting and max running over every DP rank of a `/v1/loads` answer; None if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("loads"), list):
        return None
    running = waiting = maximum = 0
    seen = False
    max_known = True
    for entry in body["loads"]:
        if not isinstance(entry, dict):
            continue
        r, w = _count(entry.get("num_running_reqs")), _count(entry.get("num_waiting_reqs"))
        if r is None and w is None:
            continue
        seen = True
        running += r or 0
        waiting += w or 0
        m = _count(entry.get("max_running_requests"))
        if not m:
            max_known = False
        else:
            maximum += m
    if not seen:
        return None
    return WorkerLoad(running, waiting, maximum if max_known else None)


def parse_server_info(body: Any) -> int | None:
    """`max_running_requests` from `/get_server_info` (the server args SGLang runs with); None when absent."""
    if not isinstance(body, dict):
        return None
    value = _count(body.get("max_running_requests"))
    if not value:
        # Some releases report the scheduler's figure only under internal_states.
        states = body.get("internal_states")
        if isinstance(states, list) and states and isinstance(states[0], dict):
            value = _count(states[0].get("max_running_requests"))
    return value or None


class CapacityReader:
    """Reads workers' load and maximum, remembering each worker's `/get_server_info` maximum once known."""

    def __init__(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        self.http = http
        self.timeout_s = timeout_s
        self._server_max: dict[str, int] = {}

    async def read(self, url: str) -> WorkerLoad | None:
        """The worker's load and maximum, or None when `/v1/loads` gives no figure."""
        try:
            response = await self.http.get(url + LOADS_PATH, timeout=self.timeout_s)
            load = parse_loads(response.json()) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("capacity poll %s failed: %r", url, exc)
            return None
        if load is None or load.max_running is not None:
            return load
        maximum = self._server_max.get(url)
        if maximum is None:
            maximum = await self._server_info_max(url)
        return WorkerLoad(load.running, load.waiting, maximum)

    async def _server_info_max(self, url: str) -> int | None:
        try:
            response = await self.http.get(url + SERVER_INFO_PATH, timeout=self.timeout_s)
            maximum = parse_server_info(response.json()) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("server info %s failed: %r", url, exc)
            return None
        if maximum is not None:
            self._server_max[url] = maximum
        return maximum
