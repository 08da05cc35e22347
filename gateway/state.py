"""The gateway's long-lived state: one settings `Snapshot` that a reload swaps whole, and the collaborators.

The key store is the one exception: it outlives reloads because the admin API changes it in place; a reload reseeds
it with the new config's tenants and keys.

A request reads `state.snapshot` once and keeps it, so it sees one consistent configuration from auth to settle.
Fields that only a restart can change (the limiter's backend, the replica's identity, telemetry, the ledger's sink, the
metrics port) are refused by
name on reload, with a log line; the running configuration then stays as it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from sparsegate.gateway.auth import KeyStore
from sparsegate.gateway.limits.base import Limiter
from sparsegate.gateway.observability import GatewayMetrics, Tracing
from sparsegate.gateway.overload import LoopMonitor, Shedder
from sparsegate.gateway.queueing import FairGate
from sparsegate.gateway.record import Observer, RequestRecord
from sparsegate.gateway.responses_store import MemoryResponseStore, ResponseStore
from sparsegate.gateway.routing import Router
from sparsegate.gateway.settings import ConfigError, RetrySettings, Settings, Timeouts
from sparsegate.gateway.upstream import UpstreamClient

log = logging.getLogger("sparsegate.state")

# Settings a running process cannot take on: the limiter and its connection, who this replica is, telemetry.
RESTART_FIELDS = (
    "redis_url", "limiter", "replica_id", "telemetry", "otel_exporter_otlp_endpoint", "ledger", "metrics_port",
    "metrics_host",
)  # fmt: skip


class Observers(Observer):
    """Fans each event out to every observer; one failing observer never breaks a request or the others.

    Each hook calls only the observers that override it: `on_chunk` runs per relayed read, so a no-op costs."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = list(observers)
        self._admitted = _overriding(self._observers, "on_admitted")
        self._attempt = _overriding(self._observers, "on_upstream_attempt")
        self._chunk = _overriding(self._observers, "on_chunk")
        self._finish = _overriding(self._observers, "on_finish")

    def on_admitted(self, record: RequestRecord) -> None:
        for obs in self._admitted:
            try:
                obs.on_admitted(record)
            except Exception:
                log.exception("observer %s failed", type(obs).__name__)

    def on_upstream_attempt(self, record: RequestRecord, worker: str, error: str | None) -> None:
        for obs in self._attempt:
            try:
                obs.on_upstream_attempt(record, worker, error)
            except Exception:
                log.exception("observer %s failed", type(obs).__name__)

    def on_chunk(self, record: RequestRecord, now: float) -> None:
        for obs in self._chunk:
            try:
                obs.on_chunk(record, now)
            except Exception:
                log.exception("observer %s failed", type(obs).__name__)

    def on_finish(self, record: RequestRecord) -> None:
        for obs in self._finish:
            try:
                obs.on_finish(record)
            except Exception:
                log.exception("observer %s failed", type(obs).__name__)


def _overriding(observers: Sequence[Observer], hook: str) -> list[Observer]:
    return [obs for obs in observers if getattr(type(obs), hook) is not getattr(Observer, hook)]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The settings and everything derived from them that a request uses; swapped whole on reload."""

    settings: Settings
    timeouts: Timeouts
    retries: RetrySettings
    max_request_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Snapshot:
        return cls(
            settings=settings,
            timeouts=settings.timeouts,
            retries=settings.retries,
            max_request_bytes=settings.max_request_bytes,
        )


def restart_fields(old: Settings, new: Settings) -> list[str]:
    return [name for name in RESTART_FIELDS if getattr(old, name) != getattr(new, name)]


@dataclass
class GatewayState:
    snapshot: Snapshot
    keys: KeyStore  # long-lived: the admin API applies its changes to it in place (auth.py)
    router: Router
    limiter: Limiter
    upstream: UpstreamClient
    observer: Observer
    metrics: GatewayMetrics
    tracing: Tracing
    monitor: LoopMonitor
    shedder: Shedder
    gate: FairGate
    started_at: int
    responses: ResponseStore = field(default_factory=lambda: MemoryResponseStore(ttl_s=86400.0, max_entries=100_000))
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def settings(self) -> Settings:
        return self.snapshot.settings

    def reload(self, settings: Settings) -> None:
        """Swap tenants, pools, timeouts, retries and bounds; requests in flight keep the snapshot they hold.

        Raises `ConfigError` (changing nothing) for fields that need a restart or an unloadable tokenizer."""
        changed = restart_fields(self.snapshot.settings, settings)
        if changed:
            raise ConfigError(f"these settings need a restart and were not applied: {', '.join(changed)}")
        snapshot = Snapshot.of(settings)
        self.router.reload(settings)  # raises ConfigError before changing anything
        self.keys.reseed(settings)  # what the admin API set still overrides the new seed
        self.shedder.max_in_flight = settings.overload.max_in_flight
        self.shedder.max_loop_lag_s = settings.overload.max_loop_lag_ms / 1000
        self.gate.reload(settings.fair_share)
        self.snapshot = snapshot

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background (worker aborts), holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def gateway_state(request: Request) -> GatewayState:
    state = request.app.state.gateway
    assert isinstance(state, GatewayState)
    return state
