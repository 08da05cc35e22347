"""How many requests a worker is running and queueing, read from whichever load endpoint it serves.

SGLang has served three load surfaces over time; a worker is asked in this order and the first one it
serves is remembered (a 404 or 405 later starts the search again, as after an upgrade):

1. `GET /v1/loads?include=core` (0.5.23): `{"timestamp", "version", ..., "loads": [{"dp_rank",
   "num_running_reqs", "num_waiting_reqs", ...}, ...]}`, one entry per DP rank (`srt/entrypoints/v1_loads.py`,
   `LoadSnapshot.to_dict`). Load = running + waiting, summed over ranks.
2. `GET /get_load` (older releases): `[{"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"}, ...]`,
   where `num_reqs` already counts running + waiting. Summed over ranks.
3. `GET /metrics` (Prometheus text; needs `--enable-metrics`): `sglang:num_running_reqs` +
   `sglang:num_queue_reqs`. Two ways to double count are avoided here:
   - with `--enable-priority-scheduling` each gauge carries its total under `priority=""` *and* a breakdown
     under `priority="<int>"` (`SchedulerMetricsCollector._log_gauge_queue_count`); only the total is read,
     and the breakdown only when no total exists;
   - one scheduler can be exported by several ranks (`tp_rank`, `pp_rank`, `moe_ep_rank` labels, e.g. with
     `--enable-metrics-for-all-schedulers`); they describe the same queue, so series are grouped by
     `dp_rank` (the unit that owns a queue), the largest figure is taken within a group, and groups add up.

A figure that cannot be read is `None`: the caller then trusts only its own in-flight count.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from enum import Enum
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

LOAD_METRICS = ("sglang:num_running_reqs", "sglang:num_queue_reqs")
PRIORITY_LABEL = "priority"
DP_RANK_LABEL = "dp_rank"


class LoadSource(Enum):
    """The endpoint a worker's load is read from, in the order they are tried."""

    V1_LOADS = "/v1/loads?include=core"
    GET_LOAD = "/get_load"
    METRICS = "/metrics"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_v1_loads(body: Any) -> int | None:
    """Running + waiting requests over all DP ranks of a 0.5.23 `/v1/loads` answer; None if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("loads"), list):
        return None
    total = 0.0
    seen = False
    for entry in body["loads"]:
        if not isinstance(entry, dict):
            continue
        running, waiting = _number(entry.get("num_running_reqs")), _number(entry.get("num_waiting_reqs"))
        if running is None and waiting is None:
            continue
        total += (running or 0.0) + (waiting or 0.0)
        seen = True
    return round(total) if seen else None


def parse_get_load(body: Any) -> int | None:
    """Requests (running + waiting) over all DP ranks of an older worker's `/get_load` answer."""
    entries = body if isinstance(body, list) else [body]
    total = 0.0
    seen = False
    for entry in entries:
        if isinstance(entry, dict) and (value := _number(entry.get("num_reqs"))) is not None:
            total += value
            seen = True
    return round(total) if seen else None


def parse_metrics(text: str) -> int | None:
    """Running + queued requests from SGLang's Prometheus text, each queue counted once (see the module doc)."""
    # (dp_rank, other labels) -> metric -> (totals, per-priority breakdown values)
    totals: dict[str | None, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    breakdowns: dict[str | None, dict[str, dict[frozenset[tuple[str, str]], float]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(float))
    )
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in LOAD_METRICS or not math.isfinite(sample.value):
                continue
            labels = sample.labels
            rank = labels.get(DP_RANK_LABEL)
            priority = labels.get(PRIORITY_LABEL, "")
            if priority == "":
                totals[rank][sample.name].append(sample.value)
            else:
                # Same scheduler, several exporting ranks: key the breakdown by everything but the priority.
                owner = frozenset((k, v) for k, v in labels.items() if k != PRIORITY_LABEL)
                breakdowns[rank][sample.name][owner] += sample.value
    if not totals and not breakdowns:
        return None
    load = 0.0
    for rank in set(totals) | set(breakdowns):
        for name in LOAD_METRICS:
            if totals[rank].get(name):
                load += max(totals[rank][name])
            elif breakdowns[rank].get(name):
                load += max(breakdowns[rank][name].values())
    return round(load)


def _parse(source: LoadSource, response: httpx.Response) -> int | None:
    if source is LoadSource.METRICS:
        return parse_metrics(response.text)
    body = response.json()
    return parse_v1_loads(body) if source is LoadSource.V1_LOADS else parse_get_load(body)


class LoadReader:
    """Reads workers' load, remembering per worker which endpoint answers."""

    def __init__(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        self.http = http
        self.timeout_s = timeout_s
        self._sources: dict[str, LoadSource] = {}

    def source(self, url: str) -> LoadSource | None:
        """The endpoint this worker answered on last, if any."""
        return self._sources.get(url)

    def forget(self, urls: Iterable[str]) -> None:
        """Drop what is known about these workers (they are no longer watched)."""
        for url in urls:
            self._sources.pop(url, None)

    async def read(self, url: str) -> int | None:
        """Running + queued requests on the worker at `url`, or None when no endpoint gives a figure.

        Transport errors and unparseable bodies give None and keep the remembered endpoint; only a
        404 / 405 moves on to the next one.
        """
        known = self._sources.get(url)
        order = list(LoadSource)
        if known is not None:
            order = order[order.index(known) :] + order[: order.index(known)]
        for source in order:
            try:
                response = await self.http.get(url + source.value, timeout=self.timeout_s)
                if response.status_code in (404, 405):
                    continue
                self._sources[url] = source
                if response.status_code != 200:
                    return None
                return _parse(source, response)
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("load poll %s%s failed: %r", url, source.value, exc)
                return None
        self._sources.pop(url, None)
        return None
