"""Fault injection: the settings a test can flip at start-up (flags) or at run time (`POST /sim/faults`).

Each generation request reads one snapshot of the settings when it arrives, so flipping a fault never
changes a request already in flight. `error_rate` draws from a `random.Random` seeded by `--seed`, so a
run with the same seed and the same request order fails the same requests.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FaultSettings(BaseModel):
    """What goes wrong, and how often. All off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of generation requests answered with `error_status` before any byte."""
    error_status: int = Field(default=500, ge=400, le=599)
    """Status of an injected error; the gateway's retry tests use 503."""
    stall_ms: float = Field(default=0.0, ge=0.0)
    """Extra wait before the first token (and before any response byte, as SGLang sends headers late)."""
    drop_after_tokens: int | None = Field(default=None, ge=0)
    """Cut the connection after this many tokens reached the client: no `[DONE]`, no chunked terminator."""
    abort_after_tokens: int | None = Field(default=None, ge=0)
    """The worker aborts each request after this many tokens of a choice, as SGLang's scheduler does on its
    own errors: `finish_reason: "abort"`, or with `abort_status` an error (event mid-stream)."""
    abort_status: int | None = Field(default=None, ge=400, le=599)
    """Status of the `abort_after_tokens` abort; None is a graceful abort (no status)."""
    unhealthy: bool = False
    """`/health`, `/health_generate` and generation answer 503."""


class FaultInjector:
    """The current `FaultSettings` and the seeded dice that decide whether `error_rate` fires."""

    def __init__(self, settings: FaultSettings, seed: int) -> None:
        self._settings = settings
        self._rng = random.Random(seed)

    @property
    def settings(self) -> FaultSettings:
        """The settings now in force (immutable; take one snapshot per request)."""
        return self._settings

    def update(self, patch: Mapping[str, Any]) -> FaultSettings:
        """Apply any subset of the fields; on bad input raise pydantic's `ValidationError`, keep the old ones."""
        merged = self._settings.model_dump() | dict(patch)
        self._settings = FaultSettings.model_validate(merged)
        return self._settings

    def draw_error(self, settings: FaultSettings) -> int | None:
        """The status to fail this request with, or None; consumes a draw only when the rate is non-zero."""
        if settings.error_rate <= 0.0:
            return None
        return settings.error_status if self._rng.random() < settings.error_rate else None
