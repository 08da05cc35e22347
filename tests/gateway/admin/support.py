"""An in-process gateway for admin-side tests: the app under its lifespan, a simulated worker as ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from sparsegate.backends.sim import SimConfig, SimState
from sparsegate.backends.sim import create_app as create_sim
from sparsegate.gateway.app import create_app
from sparsegate.gateway.settings import Settings, hash_api_key

MODEL = "glm-5.1"
WORKER = "http://sim-1:30000"
ADMIN_KEY = "sk-admin-0123456789abcdef"
ACME_KEY = "sk-acme-0123456789abcdef"


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "tenants": [{"name": "acme", "api_keys": [hash_api_key(ACME_KEY)], "models": [MODEL]}],
        "pools": [{"name": "p", "model": MODEL, "max_context": 32768, "workers": [WORKER]}],
        "admin": {"api_keys": [hash_api_key(ADMIN_KEY)]},
        "telemetry": {"log_requests": False},
    }
    return Settings(**(base | overrides))


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def running(config: Settings, **sim: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The gateway started (lifespan run), and a client on it. The worker answers through ASGI, no socket."""
    sim_state = SimState.build(SimConfig(**({"model": MODEL, "ttft_base_ms": 0.0, "itl_ms": 0.0} | sim)))
    app = create_app(config, transport=httpx.ASGITransport(app=create_sim(sim_state.config, state=sim_state)))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client,
        ):
            yield app, client
    finally:
        await sim_state.aclose()
