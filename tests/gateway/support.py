"""The gateway in process: its ASGI app driven through `httpx.ASGITransport`, with the lifespan run by hand and the
workers either simulated SGLang apps in process or `httpx.MockTransport` handlers, chosen per host."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from sparsegate.backends.sim import SimConfig, SimState
from sparsegate.backends.sim import create_app as create_sim
from sparsegate.gateway.app import Gateway, create_app
from sparsegate.gateway.record import Observer, RequestRecord
from sparsegate.gateway.settings import Settings, hash_api_key, load_settings
from sparsegate.gateway.state import GatewayState

KEY = "sk-test-0123456789abcdef"
MODEL = "glm-5.1"
FAST_SIM: dict[str, Any] = {
    "model": MODEL,
    "max_context": 32_768,
    "ttft_base_ms": 0.0,
    "ttft_per_1k_prompt_tokens_ms": 0.0,
    "itl_ms": 0.0,
    "itl_per_running_ms": 0.0,
}
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class HostTransport(httpx.AsyncBaseTransport):
    """Sends each request to the transport registered for its host (one per simulated worker)."""

    def __init__(self, by_host: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.by_host = by_host

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.by_host[request.url.host].handle_async_request(request)


def settings(workers: list[str], **extra: Any) -> Settings:
    tenant = {"name": "acme", "api_keys": [hash_api_key(KEY)], "models": ["*"], **extra.pop("tenant", {})}
    pools = [{"name": "short", "model": MODEL, "max_context": 32_768, "workers": workers}]
    tenants = [tenant, *extra.pop("extra_tenants", [])]
    return load_settings(overrides={"tenants": tenants, "pools": pools, **extra})


@dataclass
class Running:
    app: Gateway
    client: httpx.AsyncClient
    sims: dict[str, SimState]
    workers: HostTransport
    records: list[RequestRecord]

    @property
    def state(self) -> GatewayState:
        state = self.app.state.gateway
        assert isinstance(state, GatewayState)
        return state

    def breaker_failures(self) -> dict[str, int]:
        return {w.url: w.breaker.failures for w in self.state.router.workers()}

    def breaker_states(self) -> dict[str, str]:
        return {w.url: w.state for w in self.state.router.workers()}

    async def sim_stats(self, host: str) -> dict[str, Any]:
        async with httpx.AsyncClient(transport=self.workers, base_url=f"http://{host}") as client:
            stats: dict[str, Any] = (await client.get("/sim/stats")).json()
            return stats

    async def chat(self, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
        hdrs = {"authorization": f"Bearer {KEY}", "content-type": "application/json", **headers}
        if isinstance(body, bytes):
            return await self.client.post("/v1/chat/completions", content=body, headers=hdrs)
        return await self.client.post("/v1/chat/completions", json=body, headers=hdrs)


class _Collect(Observer):
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def on_finish(self, record: RequestRecord) -> None:
        self.records.append(record)


@asynccontextmanager
async def running(
    *, sims: int = 1, mocks: dict[str, Handler] | None = None, sim_overrides: dict[str, Any] | None = None, **extra: Any
) -> AsyncIterator[Running]:
    """A gateway over `sims` simulated workers (http://sim-0 ...) and any mocked ones (http://<host>)."""
    states = {f"sim-{i}": SimState.build(SimConfig(**{**FAST_SIM, **(sim_overrides or {})})) for i in range(sims)}
    by_host: dict[str, httpx.AsyncBaseTransport] = {
        host: httpx.ASGITransport(app=create_sim(state.config, state=state)) for host, state in states.items()
    }
    for host, handler in (mocks or {}).items():
        by_host[host] = httpx.MockTransport(handler)
    workers = [f"http://{host}" for host in by_host]
    hosts = HostTransport(by_host)
    collector = _Collect()
    app = create_app(settings(workers, **extra), transport=hosts, observers=[collector])
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield Running(app, client, states, hosts, collector.records)
    finally:
        for state in states.values():
            await state.aclose()


def chat(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}
