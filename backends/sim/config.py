"""Settings of one simulated worker, and the command-line flags that build them.

Defaults are small on purpose: a test request finishes in well under a second.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .faults import FaultSettings


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything one simulated SGLang worker needs; built once, never mutated (faults change at run time)."""

    model: str = "sim-model"
    """Served model name (`/v1/models` `data[].id`)."""
    max_context: int = 8192
    """Context length in tokens: prompt (+ `max_tokens`) above it is refused with 400."""
    host: str = "127.0.0.1"
    port: int = 30000
    model_path: str | None = None
    """Reported as `model_path`; defaults to `model`."""
    max_running: int = 64
    """Requests decoding at once; the rest wait in the queue (`sglang:num_queue_reqs`)."""
    max_total_tokens: int | None = None
    """KV pool size behind `sglang:token_usage`; defaults to `max_context * max_running`."""
    ttft_base_ms: float = 5.0
    ttft_per_1k_prompt_tokens_ms: float = 5.0
    itl_ms: float = 2.0
    itl_per_running_ms: float = 0.02
    disconnect_detect_ms: float = 2000.0
    """How long a request keeps generating after its client left, as SGLang notices disconnects late."""
    health_timeout_s: float = 20.0
    """`/health_generate` answers 503 when its one-token generation takes longer than this."""
    enable_cache_report: bool = False
    """SGLang's `--enable-cache-report`: usage carries `prompt_tokens_details.cached_tokens`."""
    enable_priority_scheduling: bool = False
    """SGLang's flag: `/metrics` adds `priority` labels (totals under `""`, one series per priority), and a freed
    slot goes to the waiting request with the largest priority."""
    reasoning_parser: str | None = None
    """SGLang's `--reasoning-parser`: text choices open with reasoning, sent as `reasoning_content`."""
    legacy_get_load: bool = False
    """Also serve `/get_load`, as SGLang releases before `/v1/loads` did (0.5.23 has none)."""
    prefix_cache_tokens: int | None = None
    """Prefix cache size in tokens (LRU of 16-token blocks); defaults to the KV pool size; 0 turns it off."""
    seed: int = 0
    """Seeds the fault dice (`error_rate`); generated text depends on the request only."""
    recent_limit: int = 500
    """How many requests `/sim/stats` remembers."""
    log_level: str = "warning"
    faults: FaultSettings = field(default_factory=FaultSettings)
    """Faults in force at start-up; `POST /sim/faults` changes them later."""

    def __post_init__(self) -> None:
        for name in ("max_context", "max_running", "recent_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise ValueError(f"max_total_tokens must be at least 1, got {self.max_total_tokens}")
        if self.prefix_cache_tokens is not None and self.prefix_cache_tokens < 0:
            raise ValueError(f"prefix_cache_tokens must not be negative, got {self.prefix_cache_tokens}")
        for name in (
            "ttft_base_ms",
            "ttft_per_1k_prompt_tokens_ms",
            "itl_ms",
            "itl_per_running_ms",
            "disconnect_detect_ms",
            "health_timeout_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")

    @property
    def effective_model_path(self) -> str:
        """`model_path`, or the served name when none was given."""
        return self.model_path or self.model

    @property
    def kv_capacity_tokens(self) -> int:
        """The KV pool size `token_usage` is measured against."""
        return self.max_total_tokens or self.max_context * self.max_running

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view, for `/sim/config` and `/get_server_info`."""
        data = asdict(self)
        data["faults"] = self.faults.model_dump()
        return data


def build_parser(prog: str = "python -m sparsegate.backends.sim") -> argparse.ArgumentParser:
    """The argument parser for the simulator's flags; `sparsegate sim` uses the same one."""
    defaults = SimConfig()
    fault_defaults = FaultSettings()
    parser = argparse.ArgumentParser(prog=prog, description="A GPU-free simulated SGLang worker.")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port (printed)")
    parser.add_argument("--model", default=defaults.model, help="served model name")
    parser.add_argument("--model-path", default=None, help="reported model path (default: --model)")
    parser.add_argument("--max-context", type=int, default=defaults.max_context, help="context length in tokens")
    parser.add_argument("--max-running", type=int, default=defaults.max_running, help="requests decoding at once")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size for token_usage")
    parser.add_argument("--prefix-cache-tokens", type=int, default=None, help="prefix cache size (0: off)")
    sglang = parser.add_argument_group("SGLang server flags the simulator honours")
    sglang.add_argument("--enable-cache-report", action="store_true", help="report cached_tokens in usage")
    sglang.add_argument(
        "--enable-priority-scheduling",
        action="store_true",
        help="priority labels in /metrics; a freed slot goes to the waiting request with the largest priority",
    )
    sglang.add_argument("--legacy-get-load", action="store_true", help="also serve /get_load, like older SGLang")
    sglang.add_argument("--reasoning-parser", default=None, help="e.g. glm45: answers open with reasoning_content")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--ttft-base-ms", type=float, default=defaults.ttft_base_ms)
    timing.add_argument("--ttft-per-1k-prompt-tokens-ms", type=float, default=defaults.ttft_per_1k_prompt_tokens_ms)
    timing.add_argument("--itl-ms", type=float, default=defaults.itl_ms)
    timing.add_argument("--itl-per-running-ms", type=float, default=defaults.itl_per_running_ms)
    timing.add_argument("--disconnect-detect-ms", type=float, default=defaults.disconnect_detect_ms)
    timing.add_argument("--health-timeout-s", type=float, default=defaults.health_timeout_s)
    faults = parser.add_argument_group("faults (also settable at run time via POST /sim/faults)")
    faults.add_argument("--error-rate", type=float, default=fault_defaults.error_rate)
    faults.add_argument("--error-status", type=int, default=fault_defaults.error_status)
    faults.add_argument("--stall-ms", type=float, default=fault_defaults.stall_ms)
    faults.add_argument("--drop-after-tokens", type=int, default=None)
    faults.add_argument("--abort-after-tokens", type=int, default=None)
    faults.add_argument("--abort-status", type=int, default=None)
    faults.add_argument("--unhealthy", action="store_true")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the error_rate dice")
    parser.add_argument("--recent-limit", type=int, default=defaults.recent_limit)
    parser.add_argument("--log-level", default=defaults.log_level, choices=["critical", "error", "warning", "info"])
    return parser


def parse_config(argv: Sequence[str] | None = None) -> SimConfig:
    """Build a `SimConfig` from flags; raises `SystemExit` (argparse's way) on bad flags or values."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = FaultSettings(
            error_rate=args.error_rate,
            error_status=args.error_status,
            stall_ms=args.stall_ms,
            drop_after_tokens=args.drop_after_tokens,
            abort_after_tokens=args.abort_after_tokens,
            abort_status=args.abort_status,
            unhealthy=args.unhealthy,
        )
        return SimConfig(
            model=args.model,
            max_context=args.max_context,
            host=args.host,
            port=args.port,
            model_path=args.model_path,
            max_running=args.max_running,
            max_total_tokens=args.max_total_tokens,
            prefix_cache_tokens=args.prefix_cache_tokens,
            enable_cache_report=args.enable_cache_report,
            enable_priority_scheduling=args.enable_priority_scheduling,
            legacy_get_load=args.legacy_get_load,
            reasoning_parser=args.reasoning_parser,
            ttft_base_ms=args.ttft_base_ms,
            ttft_per_1k_prompt_tokens_ms=args.ttft_per_1k_prompt_tokens_ms,
            itl_ms=args.itl_ms,
            itl_per_running_ms=args.itl_per_running_ms,
            disconnect_detect_ms=args.disconnect_detect_ms,
            health_timeout_s=args.health_timeout_s,
            seed=args.seed,
            recent_limit=args.recent_limit,
            log_level=args.log_level,
            faults=faults,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        parser.error(str(exc))
