"""Fixtures for end-to-end tests: factories for sim worker processes and gateway processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import MODEL, Gateway, Sim


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    """`sims(max_context=..., args=[...], model=...)` starts a simulated worker process."""
    started: list[Sim] = []

    def start(max_context: int = 32_768, args: list[str] | None = None, model: str = MODEL) -> Sim:
        sim = Sim(model=model, max_context=max_context, args=list(args or []), workdir=tmp_path).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`gateways(config, env={...})` starts a gateway process on a free port with that config."""
    started: list[Gateway] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> Gateway:
        gw = Gateway(config=config, workdir=tmp_path, env=dict(env or {})).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
