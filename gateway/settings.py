"""Gateway settings: one pydantic-settings class, built once at start from a YAML file plus `SPARSEGATE_*` env.

Nothing else in the gateway reads `os.environ`. Environment variables override the file; nested fields use
`__` (`SPARSEGATE_TIMEOUTS__CONNECT_S=1.5`), lists take JSON (`SPARSEGATE_POOLS='[...]'`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")

RoutingPolicyName = Literal["prefix_affinity", "power_of_two", "least_outstanding"]
FailurePolicy = Literal["fail_open", "fail_closed"]


def hash_api_key(key: str) -> str:
    """The stored form of an API key. Keys are high-entropy secrets, so a plain SHA-256 is the right tool."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Section):
    """Per-tenant (or per tenant and model) limits. `None` means unlimited."""

    rpm: int | None = Field(default=None, gt=0, description="requests per minute")
    tpm: int | None = Field(default=None, gt=0, description="tokens per minute (prompt + completion)")
    max_concurrent: int | None = Field(default=None, gt=0, description="requests in flight at once")
    max_tokens: int | None = Field(
        default=None, gt=0, description="completion budget reserved when a request gives no max_tokens"
    )


class Budgets(_Section):
    """Token quotas over UTC calendar periods (prompt + completion tokens). `None` means no quota."""

    tokens_per_day: int | None = Field(default=None, gt=0, description="resets at 00:00 UTC")
    tokens_per_month: int | None = Field(default=None, gt=0, description="resets at 00:00 UTC on the 1st")


def _check_hashed(keys: list[SecretStr]) -> list[SecretStr]:
    for i, key in enumerate(keys):
        if not _KEY_HASH.match(key.get_secret_value()):
            raise ValueError(
                f"api_keys[{i}] must be stored hashed as 'sha256:<64 lowercase hex>' "
                "(run `sparsegate hash-key` to make one); plain keys are refused"
            )
    return keys


class TenantConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="stored hashed, as sha256:<64 hex>; more can be issued by the admin API"
    )
    models: list[str] = Field(min_length=1, description='models the tenant may use; "*" allows every model')
    limits: Limits = Limits()
    budgets: Budgets = Budgets()
    model_limits: dict[str, Limits] = Field(default_factory=dict, description="extra limits per (tenant, model)")
    priority: int | None = Field(
        default=None, description="sent to SGLang as the request's priority; also the tier in the fair queue"
    )
    weight: float = Field(default=1.0, gt=0, description="share of a saturated pool against others in its tier")
    on_limiter_failure: FailurePolicy = "fail_open"

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        return _check_hashed(keys)

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class PoolConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(min_length=1)
    max_context: int = Field(gt=0)
    workers: list[str] = Field(min_length=1, description="worker base URLs, e.g. http://10.0.0.5:30000")
    policy: RoutingPolicyName = "prefix_affinity"
    tenants: list[str] | None = Field(default=None, description="only these tenants may use the pool; all if unset")

    @field_validator("workers")
    @classmethod
    def _urls(cls, workers: list[str]) -> list[str]:
        out = []
        for i, url in enumerate(workers):
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"workers[{i}]={url!r} is not an http(s) base URL")
            out.append(url.rstrip("/"))
        if len(set(out)) != len(out):
            raise ValueError("workers lists the same URL twice")
        return out


class ModelConfig(_Section):
    name: str = Field(min_length=1)
    tokenizer: Path | None = Field(default=None, description="a local tokenizer.json for exact prompt counts")
    hidden: bool = False


class Timeouts(_Section):
    connect_s: float = Field(default=2.0, gt=0)
    first_byte_s: float = Field(default=120.0, gt=0, description="upstream headers and first event")
    read_s: float = Field(default=60.0, gt=0, description="longest gap between two streamed events")
    total_s: float = Field(default=1800.0, gt=0, description="whole non-streaming request")
    abort_s: float = Field(default=2.0, gt=0, description="the /abort_request call after a disconnect")


class LimiterSettings(_Section):
    redis_url: SecretStr | None = Field(default=None, description="absent means the in-memory limiter")
    key_prefix: str = "sg"
    socket_timeout_s: float = Field(default=0.05, gt=0)
    connect_timeout_s: float = Field(default=0.05, gt=0)
    queue_wait_s: float = Field(
        default=1.0, gt=0, description="the longest a call waits for one of the limiter's Redis connections"
    )
    breaker_failures: int = Field(default=3, gt=0, description="consecutive Redis failures that open the breaker")
    breaker_reset_s: float = Field(default=2.0, gt=0, description="how long the breaker stays open before a probe")
    lease_ttl_s: float = Field(default=900.0, gt=0, description="a concurrency slot expires after this if not settled")
    heartbeat_s: float = Field(default=2.0, gt=0, description="replica heartbeat period, for fail-open shares")


class HealthSettings(_Section):
    probe_interval_s: float = Field(default=5.0, gt=0)
    probe_timeout_s: float = Field(default=5.0, gt=0)
    failure_threshold: int = Field(default=3, gt=0, description="consecutive failures that open a worker's breaker")
    open_s: float = Field(default=10.0, gt=0, description="how long a breaker stays open before a half-open try")
    load_poll_s: float = Field(default=1.0, gt=0)


class RetrySettings(_Section):
    max_attempts: int = Field(default=3, ge=1, description="attempts per request, before the first byte only")


class OverloadSettings(_Section):
    """Per-process bounds beyond which new requests are shed (503 with retry-after) before admission."""

    max_in_flight: int = Field(default=1024, gt=0, description="requests served at once by one process")
    max_loop_lag_ms: float = Field(
        default=1000.0,
        gt=0,
        description="shed new requests while the event loop runs this far behind (lower it to trade refusals for "
        "latency; on a box shared with other busy processes, bursts alone can cause a few hundred ms)",
    )


class FairShareSettings(_Section):
    """Fair queuing in the gateway when a pool is saturated (gateway/queueing/)."""

    enabled: bool = True
    headroom: int = Field(default=0, ge=0, description="requests each worker may queue beyond its max_running_requests")
    max_queued_per_tenant: int = Field(
        default=1024,
        gt=0,
        description="per tenant and pool; beyond it a 429 (the default leaves the bound to overload.max_in_flight)",
    )
    pacing: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="grants out of the queue are spaced by this fraction of the mean time for one slot to free up "
        "(breaks up batches that would otherwise all end at once); 0 turns it off",
    )
    max_wait_s: float = Field(
        default=60.0, gt=0, description="longest wait in the queue (the first-byte deadline also bounds it)"
    )
    poll_s: float = Field(default=0.25, gt=0, description="how often workers' load and maximum are read")
    poll_timeout_s: float = Field(default=1.0, gt=0)


class ResponsesSettings(_Section):
    """Where stored OpenAI responses live (gateway/responses_store.py)."""

    ttl_s: float = Field(default=86400.0, gt=0, description="how long the gateway remembers a response's worker")
    max_entries: int = Field(default=100_000, gt=0, description="entries kept in memory (per replica)")
    redis_deadline_s: float = Field(default=0.1, gt=0, description="longest a lookup waits for Redis")


class TelemetrySettings(_Section):
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP endpoint; the OTEL_* variables also work")
    service_name: str = "sparsegate-gateway"
    log_requests: bool = True


class AdminSettings(_Section):
    """The admin API (/admin/v1/*, and /metrics on the API port): off unless an admin key is configured."""

    api_keys: list[SecretStr] = Field(default_factory=list, description="stored hashed, as sha256:<64 hex>")
    state_file: Path | None = Field(
        default=None, description="without Redis: where tenants and keys set through the API are kept"
    )
    sync_interval_s: float = Field(default=0.25, gt=0, le=1.0, description="with Redis: how often a replica polls")

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        return _check_hashed(keys)


class Price(_Section):
    """What one model costs: per 1K input and output tokens, and/or per GPU-second estimated from the tokens and
    the context length (ledger/prices.py states the estimate)."""

    input_per_1k: float = Field(default=0.0, ge=0)
    output_per_1k: float = Field(default=0.0, ge=0)
    per_gpu_second: float = Field(default=0.0, ge=0)
    prefill_tokens_per_gpu_s: float = Field(default=10_000.0, gt=0, description="prompt tokens a GPU-second holds")
    decode_tokens_per_gpu_s: float = Field(
        default=50.0, gt=0, description="output tokens a GPU-second holds, short context"
    )
    context_scale_tokens: int = Field(
        default=32_768, gt=0, description="the context at which one output token costs twice a short-context one"
    )


class LedgerSettings(_Section):
    """The usage ledger: one record per finished request, in Redis Streams with Redis, else in a local file."""

    enabled: bool = True
    file: Path | None = Field(
        default=None, description="without Redis: the append-only file (unset: kept in memory only, not durable)"
    )
    fsync: Literal["always", "never"] = Field(
        default="always", description="a thread fsyncs after writes (group commit)"
    )
    stream_maxlen: int | None = Field(default=None, gt=0, description="Redis stream trim (approximate); None keeps all")
    prices: dict[str, Price] = Field(default_factory=dict, description="per model; spend is left out without one")


class Settings(BaseSettings):
    """The whole gateway configuration. Field names are a stable, documented contract (README)."""

    model_config = SettingsConfigDict(
        env_prefix="SPARSEGATE_", env_nested_delimiter="__", extra="forbid", frozen=True, validate_default=True
    )

    tenants: list[TenantConfig] = Field(min_length=1)
    pools: list[PoolConfig] = Field(min_length=1)
    models: list[ModelConfig] = Field(default_factory=list)
    redis_url: SecretStr | None = Field(default=None, description="absent means the in-memory limiter")
    limiter: LimiterSettings = LimiterSettings()
    timeouts: Timeouts = Timeouts()
    health: HealthSettings = HealthSettings()
    retries: RetrySettings = RetrySettings()
    overload: OverloadSettings = OverloadSettings()
    fair_share: FairShareSettings = FairShareSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    responses: ResponsesSettings = ResponsesSettings()
    admin: AdminSettings = AdminSettings()
    ledger: LedgerSettings = LedgerSettings()
    metrics_port: int | None = Field(
        default=None, gt=0, lt=65536, description="serve /metrics without auth on this port (keep it internal)"
    )
    metrics_host: str = Field(default="0.0.0.0", description="the address metrics_port listens on")
    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    default_max_tokens: int = Field(default=4096, gt=0, description="completion budget when neither side names one")
    replica_id: str | None = Field(default=None, description="this replica's name in Redis; random if unset")
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("otel_exporter_otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="the standard OTel variable, honoured as a fallback for telemetry.otlp_endpoint",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (which arrives as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [t.name for t in self.tenants]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tenants: duplicate name(s) {sorted(dup)}")
        seen: dict[str, str] = {}
        for t in self.tenants:
            for key in t.api_keys:
                h = key.get_secret_value()
                if h in seen:
                    raise ValueError(f"tenants: tenants {seen[h]!r} and {t.name!r} share an API key")
                seen[h] = t.name
        for key in self.admin.api_keys:
            if key.get_secret_value() in seen:
                raise ValueError(f"admin.api_keys: a key is also tenant {seen[key.get_secret_value()]!r}'s key")
        pool_names = [p.name for p in self.pools]
        dup = {n for n in pool_names if pool_names.count(n) > 1}
        if dup:
            raise ValueError(f"pools: duplicate name(s) {sorted(dup)}")
        for p in self.pools:
            for tenant in p.tenants or []:
                if tenant not in names:
                    raise ValueError(f"pools.{p.name}.tenants names unknown tenant {tenant!r}")
        served = {p.model for p in self.pools}
        for m in self.models:
            if m.name not in served:
                raise ValueError(f"models: {m.name!r} is served by no pool")
        return self

    @property
    def effective_redis_url(self) -> str | None:
        url = self.redis_url or self.limiter.redis_url
        return url.get_secret_value() if url else None


class ConfigError(Exception):
    """A configuration that cannot start the gateway; the message names the field."""


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        lines.append(f"  {loc}: {err.get('msg')}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from a YAML file (or a plain dict), with the environment on top."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data.update(raw)
    if overrides:
        data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
