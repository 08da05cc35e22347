"""Fixtures for the simulator's in-process tests: a sim app behind `httpx.ASGITransport`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sparsegate.backends.sim import SimConfig, SimState, create_app

from .sim_support import FAST, MakeSim, Sim


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    made: list[Sim] = []

    async def make(**overrides: Any) -> Sim:
        state = SimState.build(SimConfig(**{**FAST, **overrides}))
        transport = httpx.ASGITransport(app=create_app(state.config, state=state))
        sim = Sim(httpx.AsyncClient(transport=transport, base_url="http://sim"), state)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        await sim.client.aclose()
        await sim.state.aclose()


@pytest.fixture
async def sim(make_sim: MakeSim) -> Sim:
    return await make_sim()
