"""`/v1/loads` as SGLang 0.5.23 answers it (`entrypoints/v1_loads.py`, `LoadSnapshot.to_dict`), and the
`/get_load` of older releases for `--legacy-get-load`.

One DP rank. `to_dict` returns every core field of the snapshot; sections (`memory`, `queues`; the
simulator has no speculative decoding, LoRA or disaggregation, whose sections SGLang leaves out when unset)
follow unless `include` names others. `include` outside SGLang's list is a 400 with SGLang's message, and
`format=prometheus` gives `sglang_<field>{dp_rank="0"}` gauges (`sglang_<section>_<field>` for sections).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import Response

from .errors import HTTPError
from .state import SimState

VALID_SECTIONS = frozenset({"core", "memory", "spec", "lora", "disagg", "queues", "all"})
SECTION_PREFIXES = {"speculative": "spec", "disaggregation": "disagg"}
SGLANG_VERSION = "0.5.23"


def snapshot(sim: SimState) -> dict[str, Any]:
    """Rank 0's `LoadSnapshot.to_dict()` with every section the simulator has."""
    engine, config = sim.engine, sim.config
    running = sum(engine.running_by_priority().values())
    queued = sum(engine.queued_by_priority().values())
    cache = engine.cache
    hit_rate = cache.hit_rate() if cache is not None else 0.0
    return {
        "timestamp": time.time(),
        "dp_rank": 0,
        "num_running_reqs": running,
        "num_waiting_reqs": queued,
        "num_waiting_uncached_tokens": round(engine.queued_prompt_tokens * (1.0 - hit_rate)),
        "num_used_tokens": engine.kv_used_tokens,
        "num_total_tokens": engine.kv_used_tokens + engine.queued_prompt_tokens,
        "num_active_tokens": engine.kv_used_tokens + engine.queued_prompt_tokens,
        "num_prealloc_ready_tokens": 0,
        "max_total_num_tokens": config.kv_capacity_tokens,
        "max_running_requests": config.max_running,
        "token_usage": engine.token_usage(),
        "gen_throughput": sim.metrics.throughput(),
        "cache_hit_rate": hit_rate,
        "utilization": min(1.0, running / config.max_running),
        "total_prefill_uncached_tokens": 0,
        "total_prefill_busy_us": 0,
        "decode_moments": None,
        "memory": {"weight_gb": 0.0, "kv_cache_gb": 0.0, "graph_gb": 0.0, "token_capacity": config.kv_capacity_tokens},
        "queues": {"waiting": queued, "grammar": 0, "paused": 0, "retracted": 0, "prealloc_ready": 0},
    }


def _select(load: dict[str, Any], include: set[str] | None) -> dict[str, Any]:
    core = {key: value for key, value in load.items() if not isinstance(value, dict)}
    if include is None or "all" in include:
        return load
    if not include <= VALID_SECTIONS:
        raise HTTPError(
            f"Invalid include sections: {include - VALID_SECTIONS}. Valid options: {sorted(VALID_SECTIONS)}",
            status=400,
        )
    for field, value in load.items():
        if isinstance(value, dict) and SECTION_PREFIXES.get(field, field) in include:
            core[field] = value
    return core


def v1_loads(sim: SimState, *, dp_rank: int | None, include: str | None, prometheus: bool) -> dict[str, Any] | Response:
    """The `/v1/loads` answer."""
    sections = {part.strip() for part in include.split(",")} if include else None
    loads = [] if dp_rank not in (None, 0) else [_select(snapshot(sim), sections)]
    if prometheus:
        lines: list[str] = []
        samples: dict[str, list[tuple[int, float]]] = {}
        for load in loads:
            rank = load["dp_rank"]
            for key, value in load.items():
                if key == "dp_rank":
                    continue
                if isinstance(value, dict):
                    prefix = SECTION_PREFIXES.get(key, key)
                    for sub, sub_value in value.items():
                        if isinstance(sub_value, int | float):
                            samples.setdefault(f"sglang_{prefix}_{sub}", []).append((rank, sub_value))
                elif isinstance(value, int | float):
                    samples.setdefault(f"sglang_{key}", []).append((rank, value))
        for name, values in samples.items():
            lines.append(f"# TYPE {name} gauge")
            lines.extend(f'{name}{{dp_rank="{rank}"}} {value}' for rank, value in values)
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
    return {
        "timestamp": datetime.now(UTC).isoformat(),
        "version": SGLANG_VERSION,
        "accelerator": None,
        "num_accelerators": 1,
        "loads": loads,
    }


def legacy_get_load(sim: SimState) -> list[dict[str, Any]]:
    """`/get_load` of the releases before `/v1/loads`: `num_reqs` is running + waiting, per DP rank."""
    engine = sim.engine
    running = sum(engine.running_by_priority().values())
    queued = sum(engine.queued_by_priority().values())
    return [
        {
            "dp_rank": 0,
            "num_reqs": running + queued,
            "num_waiting_reqs": queued,
            "num_tokens": engine.kv_used_tokens + engine.queued_prompt_tokens,
        }
    ]
