"""Everything one simulated worker holds, built once per app and handed to the routes through `app.state`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .cache import PrefixCache
from .config import SimConfig
from .engine import Engine
from .faults import FaultInjector
from .metrics import SimMetrics
from .model import TimingModel
from .stats import SimStats


@dataclass
class SimState:
    """The worker's config, fault switches, counters, metrics and engine."""

    config: SimConfig
    faults: FaultInjector
    stats: SimStats
    engine: Engine
    metrics: SimMetrics
    started_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, config: SimConfig) -> SimState:
        """Wire a fresh worker from its config. No task starts until the first request."""
        stats = SimStats(config.recent_limit)
        timing = TimingModel(
            ttft_base_ms=config.ttft_base_ms,
            ttft_per_1k_prompt_tokens_ms=config.ttft_per_1k_prompt_tokens_ms,
            itl_ms=config.itl_ms,
            itl_per_running_ms=config.itl_per_running_ms,
        )
        cache_tokens = config.kv_capacity_tokens if config.prefix_cache_tokens is None else config.prefix_cache_tokens
        cache = PrefixCache(cache_tokens)
        engine = Engine(
            max_running=config.max_running,
            kv_capacity_tokens=config.kv_capacity_tokens,
            timing=timing,
            stats=stats,
            cache=cache,
            priority_scheduling=config.enable_priority_scheduling,
        )
        metrics = SimMetrics(
            config.model,
            running=engine.running_by_priority,
            queued=engine.queued_by_priority,
            token_usage=engine.token_usage,
            used_tokens=lambda: engine.kv_used_tokens,
            cache_hit_rate=cache.hit_rate,
            priority_scheduling=config.enable_priority_scheduling,
        )
        engine.metrics = metrics
        return cls(
            config=config,
            faults=FaultInjector(config.faults, config.seed),
            stats=stats,
            engine=engine,
            metrics=metrics,
        )

    def live_view(self) -> dict[str, object]:
        """The live part of `/sim/stats`."""
        rids = self.engine.active_rids()
        return {
            "active": len(rids),
            "running": self.engine.running,
            "queued": self.engine.queued,
            "rids_active": rids,
        }

    async def aclose(self) -> None:
        """Stop every request in flight (app shutdown, or the end of a test)."""
        await self.engine.aclose()
