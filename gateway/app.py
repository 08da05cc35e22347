"""The FastAPI application: built from settings, with every client created in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
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
from sparsegate.gateway.errors import GatewayError, handle_exception
from sparsegate.gateway.ledger.service import Ledger, build_sink
from sparsegate.gateway.limits import build_limiter
from sparsegate.gateway.observability import GatewayMetrics, Tracing, provider_from_settings
from sparsegate.gateway.observability.logs import request_id_var
from sparsegate.gateway.openapi import install_openapi
from sparsegate.gateway.pipeline import request_id_of
from sparsegate.gateway.record import Observer
from sparsegate.gateway.relay import Services
from sparsegate.gateway.requestlog import RequestLog
from sparsegate.gateway.routes import api
from sparsegate.gateway.routing import Router
from sparsegate.gateway.settings import ConfigError, Settings, load_settings
from sparsegate.gateway.state import GatewayState, Observers
from sparsegate.gateway.upstream import Upstream

log = logging.getLogger("sparsegate.app")


class RequestIdMiddleware:
    """Gives every request an id (the caller's `x-request-id` when safe) and echoes it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        request_id = request_id_of(Request(scope))
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
) -> FastAPI:
    """Build the gateway. `transport` swaps the network for tests (an ASGI app or MockTransport); a
    `tracer_provider` (e.g. with an in-memory exporter) replaces the one built from the settings."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=30.0)
        async with httpx.AsyncClient(transport=transport, limits=limits, follow_redirects=False) as client:
            router = Router(settings, client)
            limiter = build_limiter(settings, replica_id=settings.replica_id or f"gw-{uuid.uuid4().hex[:12]}")
            metrics = GatewayMetrics(lambda: router.workers())
            tracing = Tracing(tracer_provider if tracer_provider is not None else provider_from_settings(settings))
            ledger = build_ledger(settings)
            services = Services(
                router=router,
                upstream=Upstream(client, settings.timeouts),
                limiter=limiter,
                observer=Observers([metrics, tracing, RequestLog(), *([ledger] if ledger else []), *(observers or [])]),
                timeouts=settings.timeouts,
                retries=settings.retries,
            )
            state = GatewayState(
                settings=settings,
                keys=KeyStore(settings),
                router=router,
                limiter=limiter,
                services=services,
                started_at=int(time.time()),
                tracing=tracing,
                metrics=metrics,
            )
            app.state.gateway = state
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
                await admin.close()
                await router.close()
                await limiter.close()
                if ledger is not None:
                    await ledger.close()
                tracing.shutdown()

    app = FastAPI(
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
    """SIGHUP re-reads the config file and swaps tenants and pools without touching streams in flight."""
    if config_path is None:
        return lambda: None
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            new = load_settings(config_path)
            if new.effective_redis_url != state.settings.effective_redis_url:
                log.warning("redis_url changed; the limiter keeps its connection until restart")
            state.reload(new)  # refuses (ConfigError) before changing anything, e.g. on an unloadable tokenizer
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
