"""The gateway as an ASGI application, built from settings, with every client created in the lifespan.

Two layers: a thin dispatcher (`Gateway.__call__`) serves the generation routes (`POST /v1/chat/completions`,
`POST /v1/completions`) straight on ASGI through `pipeline.serve`, with no framework objects or middleware on the hot
path; everything else (models, health, metrics, admin, /docs and OpenAPI) is FastAPI's.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from opentelemetry.sdk.trace import TracerProvider
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sparsegate.gateway.admin.routes import admin_api
from sparsegate.gateway.admin.service import Admin
from sparsegate.gateway.admin.store import build_store
from sparsegate.gateway.auth import KeyStore
from sparsegate.gateway.context import mint_id
from sparsegate.gateway.errors import GatewayError, handle_exception
from sparsegate.gateway.intake import request_id_of
from sparsegate.gateway.ledger.service import Ledger, build_sink
from sparsegate.gateway.limits import build_limiter
from sparsegate.gateway.observability import GatewayMetrics, Tracing, provider_from_settings
from sparsegate.gateway.observability.logs import request_id_var
from sparsegate.gateway.openapi import install_openapi
from sparsegate.gateway.overload import LoopMonitor, Shedder
from sparsegate.gateway.pipeline import ENDPOINTS, serve
from sparsegate.gateway.queueing import FairGate, QueueMetrics
from sparsegate.gateway.record import Observer
from sparsegate.gateway.requestlog import RequestLog
from sparsegate.gateway.responses_store import build_response_store
from sparsegate.gateway.routes import api
from sparsegate.gateway.routing import Router
from sparsegate.gateway.settings import ConfigError, Settings, load_settings
from sparsegate.gateway.state import GatewayState, Observers, Snapshot
from sparsegate.gateway.upstream import UpstreamClient
from sparsegate.gateway.upstream.via_aiohttp import AiohttpUpstream
from sparsegate.gateway.upstream.via_httpx import HttpxUpstream
from sparsegate.gateway.wire import header_map

log = logging.getLogger("sparsegate.app")


class Gateway(FastAPI):
    """The FastAPI app, with the generation routes dispatched to the pipeline before its middleware and routing."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = ENDPOINTS.get(scope["path"])
            if endpoint is not None:
                await serve(self.state.gateway, scope, receive, send, endpoint)
                return
        await super().__call__(scope, receive, send)


class RequestIdMiddleware:
    """Gives every FastAPI-served request an id (the caller's `x-request-id` when safe) and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(header_map(scope))
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_var.set(request_id)  # every log line of this request carries it (observability/logs.py)
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(
    settings: Settings,
    *,
    config_path: Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    observers: list[Observer] | None = None,
    tracer_provider: TracerProvider | None = None,
    metrics_dir: str | None = None,
) -> Gateway:
    """Build the gateway. `transport` swaps the network for tests (an ASGI app or MockTransport), and the requests
    to workers then go through httpx too; a `tracer_provider` (e.g. with an in-memory exporter) replaces the one
    built from the settings. `metrics_dir` is prometheus_client's multiprocess directory when several processes
    serve one port (supervisor.py): /metrics then answers for all of them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=30.0)
        async with httpx.AsyncClient(transport=transport, limits=limits, follow_redirects=False) as client:
            router = Router(settings, client)
            monitor = LoopMonitor()
            limiter = build_limiter(settings, replica_id=settings.replica_id or mint_id("gw"), monitor=monitor)
            metrics = GatewayMetrics(lambda: router.workers(), multiprocess_dir=metrics_dir)
            tracing = Tracing(tracer_provider if tracer_provider is not None else provider_from_settings(settings))
            connect_s, abort_s = settings.timeouts.connect_s, settings.timeouts.abort_s
            upstream: UpstreamClient = (
                HttpxUpstream(client, connect_s=connect_s, abort_s=abort_s)
                if transport is not None
                else AiohttpUpstream(monitor, connect_s=connect_s, abort_s=abort_s)
            )
            ledger = build_ledger(settings)
            gate = FairGate(
                settings.fair_share,
                router.workers,
                client,
                monitor,
                metrics=QueueMetrics(metrics.registry),
            )
            observer = Observers([metrics, tracing, RequestLog(), *([ledger] if ledger else []), *(observers or [])])
            state = GatewayState(
                snapshot=Snapshot.of(settings),
                keys=KeyStore(settings),
                router=router,
                limiter=limiter,
                upstream=upstream,
                observer=observer,
                metrics=metrics,
                tracing=tracing,
                monitor=monitor,
                shedder=Shedder(
                    monitor,
                    max_in_flight=settings.overload.max_in_flight,
                    max_loop_lag_s=settings.overload.max_loop_lag_ms / 1000,
                ),
                gate=gate,
                started_at=int(time.time()),
                responses=build_response_store(settings),
            )
            app.state.gateway = state
            monitor.start()
            app.state.admin = admin = Admin(
                store=build_store(
                    settings.effective_redis_url,
                    prefix=settings.limiter.key_prefix,
                    state_file=settings.admin.state_file,
                    interval_s=settings.admin.sync_interval_s,
                ),
                keys=state.keys,
                admin_hashes=lambda: {k.get_secret_value() for k in state.settings.admin.api_keys},
                ledger=ledger,
            )
            if ledger is not None:
                await ledger.start()
            await limiter.start()
            await router.start()
            await gate.start()
            await admin.start()
            remove_reload = _install_reload(state, config_path)
            stop_metrics = (
                metrics.serve(settings.metrics_host, settings.metrics_port) if settings.metrics_port else lambda: None
            )
            try:
                yield
            finally:
                stop_metrics()
                remove_reload()
                monitor.close()
                await admin.close()
                await gate.close()
                await router.close()
                await limiter.close()
                await state.responses.close()
                await upstream.close()
                if ledger is not None:
                    await ledger.close()
                tracing.shutdown()

    app = Gateway(
        title="sparsegate",
        summary="OpenAI-compatible gateway for sparse-attention LLMs served by SGLang",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
    )
    for exc_class in (GatewayError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, handle_exception)
    app.include_router(api)
    install_openapi(app)
    app.include_router(admin_api)
    app.add_middleware(RequestIdMiddleware)
    return app


def build_ledger(settings: Settings) -> Ledger | None:
    if not settings.ledger.enabled:
        return None
    sink = build_sink(settings.ledger, settings.effective_redis_url, settings.limiter.key_prefix)
    return Ledger(sink, dict(settings.ledger.prices))


def _install_reload(state: GatewayState, config_path: Path | None) -> Callable[[], None]:
    """SIGHUP re-reads the config file and swaps the snapshot without touching streams in flight."""
    if config_path is None:
        return lambda: None
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            new = load_settings(config_path)
            state.reload(new)  # refuses (ConfigError) before changing anything
        except ConfigError as exc:
            log.error("config reload refused, keeping the running config: %s", exc)
            return
        log.info("config reloaded from %s: %d tenants, %d pools", config_path, len(new.tenants), len(new.pools))

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):
        log.warning("SIGHUP reload is not available in this event loop")
        return lambda: None

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
