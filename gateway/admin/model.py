"""What the admin API stores: tenant overrides and issued keys, as one versioned, immutable snapshot.

The YAML config is the seed. A tenant posted through the API replaces the seed's tenant of that name (its
`models`, `limits`, `budgets`, ...), and keeps the seed's keys; keys issued through the API are added. A key can
be revoked or given an expiry whether it came from the seed or the API: the seed's keys are named by an id derived
from their hash (`cfg-<12 hex>`), so a leaked key is withdrawn without editing a file on every replica.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sparsegate.gateway.settings import Budgets, FailurePolicy, Limits, TenantConfig


class TenantSpec(BaseModel):
    """A tenant as the admin API takes it (`POST /admin/v1/tenants`); validated like the YAML's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[str] = Field(min_length=1)
    limits: Limits = Limits()
    budgets: Budgets = Budgets()
    model_limits: dict[str, Limits] = Field(default_factory=dict)
    priority: int | None = None
    weight: float = Field(default=1.0, gt=0, description="share of a saturated pool against others in its tier")
    on_limiter_failure: FailurePolicy = "fail_open"

    def as_tenant(self, seed: TenantConfig | None) -> TenantConfig:
        """The tenant the gateway serves: this spec, with the seed's keys when the seed has one of that name."""
        keys = list(seed.api_keys) if seed is not None else []
        return TenantConfig.model_validate({**self.model_dump(), "api_keys": [k.get_secret_value() for k in keys]})


class KeyRecord(BaseModel):
    """One key: only its hash is stored. `expires_at` (unix seconds) ends it: revocation sets it to the time of
    the request, rotation to the end of the overlap window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    tenant: str
    hash: str
    prefix: str = ""  # the first characters of the plain key, to recognise it in a listing
    created: float = Field(default_factory=time.time)
    expires_at: float | None = None
    budgets: Budgets = Budgets()
    seeded: bool = False  # a YAML key the API has touched (revoked, rotated, or given a budget)

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def public(self) -> dict[str, Any]:
        """What a listing shows: never the hash, which is as good as the key for an offline guess of short keys."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "prefix": self.prefix,
            "created": int(self.created),
            "expires_at": None if self.expires_at is None else int(self.expires_at),
            "budgets": self.budgets.model_dump(),
        }


class AdminState(BaseModel):
    """Everything the admin API has set. Replaced whole on every change; readers hold one snapshot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 0
    tenants: dict[str, TenantSpec] = Field(default_factory=dict)
    keys: dict[str, KeyRecord] = Field(default_factory=dict)

    def with_tenant(self, spec: TenantSpec) -> AdminState:
        return self.model_copy(update={"version": self.version + 1, "tenants": {**self.tenants, spec.name: spec}})

    def with_key(self, key: KeyRecord) -> AdminState:
        return self.model_copy(update={"version": self.version + 1, "keys": {**self.keys, key.id: key}})


def seed_key_id(key_hash: str) -> str:
    """The stable id of a key from the YAML config: not secret (12 hex of a SHA-256 say nothing about the key)."""
    return "cfg-" + key_hash.removeprefix("sha256:")[:12]
