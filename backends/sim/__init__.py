"""A GPU-free simulated SGLang worker: SGLang's HTTP surface, a timing model, and injectable faults.

Used by the gateway's tests, `make serve` and load benchmarks. In process: `create_app(SimConfig(...))`
is an ASGI app; as a process: `spawn_sim(...)` then `wait_ready(url)`, or
`python -m sparsegate.backends.sim --port P --model NAME --max-context N`.
"""

from __future__ import annotations

from .app import create_app
from .config import SimConfig, build_parser, parse_config
from .faults import FaultSettings
from .process import pick_free_port, spawn_sim, stop_sim, wait_ready
from .state import SimState

__all__ = [
    "FaultSettings",
    "SimConfig",
    "SimState",
    "build_parser",
    "create_app",
    "parse_config",
    "pick_free_port",
    "spawn_sim",
    "stop_sim",
    "wait_ready",
]
