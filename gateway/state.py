"""The gateway's long-lived state, built once in the lifespan and handed to handlers through `app.state`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import Request

from sparsegate.gateway.auth import KeyStore
from sparsegate.gateway.limits.base import Limiter
from sparsegate.gateway.observability import GatewayMetrics, Tracing
from sparsegate.gateway.record import Observer, RequestRecord
from sparsegate.gateway.relay import Services
from sparsegate.gateway.routing import Router
from sparsegate.gateway.settings import Settings

log = logging.getLogger("sparsegate.state")


class Observers(Observer):
    """Fans each event out to every observer; one failing observer never breaks a request or the others."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = list(observers)

    def _each(self, hook: Callable[[Observer], None]) -> None:
        for obs in self._observers:
            try:
                hook(obs)
            except Exception:
                log.exception("observer %s failed", type(obs).__name__)

    def on_admitted(self, record: RequestRecord) -> None:
        self._each(lambda obs: obs.on_admitted(record))

    def on_upstream_attempt(self, record: RequestRecord, worker: str, error: str | None) -> None:
        self._each(lambda obs: obs.on_upstream_attempt(record, worker, error))

    def on_chunk(self, record: RequestRecord, now: float) -> None:
        self._each(lambda obs: obs.on_chunk(record, now))

    def on_finish(self, record: RequestRecord) -> None:
        self._each(lambda obs: obs.on_finish(record))


@dataclass
class GatewayState:
    settings: Settings
    keys: KeyStore
    router: Router
    limiter: Limiter
    services: Services
    started_at: int
    tracing: Tracing
    metrics: GatewayMetrics

    @property
    def observer(self) -> Observer:
        return self.services.observer

    def reload(self, settings: Settings) -> None:
        """Swap tenants and pools in place; requests in flight keep the objects they already hold."""
        self.router.reload(settings)
        self.keys.reseed(settings)  # what the admin API set still overrides the new seed
        self.settings = settings


def gateway_state(request: Request) -> GatewayState:
    state = request.app.state.gateway
    assert isinstance(state, GatewayState)
    return state
