"""API-key authentication: a bearer key maps to a tenant through its SHA-256 hash.

Keys are never stored or logged in the clear. The error message shows only a masked form, like OpenAI's.
The tenants and keys are the YAML seed with the admin API's snapshot on top (admin/model.py); both are swapped
in place (`reseed` on SIGHUP, `apply` on an admin change), so a request holds the objects it started with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sparsegate.gateway.admin.model import AdminState, KeyRecord, seed_key_id
from sparsegate.gateway.errors import AuthenticationFailed
from sparsegate.gateway.settings import Budgets, Settings, TenantConfig, hash_api_key


def mask_key(key: str) -> str:
    if len(key) < 12:
        return "***"
    return f"{key[:3]}...{key[-4:]}"


def bearer_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    api_key = headers.get("api-key") or headers.get("x-api-key")
    return api_key.strip() if api_key else None


def missing_key() -> AuthenticationFailed:
    return AuthenticationFailed(
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )


@dataclass(frozen=True)
class Identity:
    """Who a request is: its tenant, and the key it came with (for per-key budgets and the ledger)."""

    tenant: TenantConfig
    key_id: str
    key_budgets: Budgets


@dataclass(frozen=True)
class _Entry:
    key_id: str
    tenant: str
    record: KeyRecord | None  # the admin API's view of the key, if it has one


class KeyStore:
    """Maps key hashes to tenants: the seed's keys and the admin API's, minus revoked and expired ones."""

    def __init__(
        self, settings: Settings, overlay: AdminState | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._overlay = overlay or AdminState()
        self._clock = clock
        self._rebuild()

    @property
    def overlay(self) -> AdminState:
        return self._overlay

    @property
    def seed(self) -> Settings:
        return self._settings

    def reseed(self, settings: Settings) -> None:
        """A new YAML config (SIGHUP); what the admin API set still overrides it."""
        self._settings = settings
        self._rebuild()

    def apply(self, overlay: AdminState) -> None:
        """A new admin snapshot (the store hands them over in order)."""
        self._overlay = overlay
        self._rebuild()

    def _rebuild(self) -> None:
        seed = {t.name: t for t in self._settings.tenants}
        tenants = dict(seed)
        for name, spec in self._overlay.tenants.items():
            tenants[name] = spec.as_tenant(seed.get(name))
        by_hash: dict[str, _Entry] = {}
        for tenant in tenants.values():
            for key in tenant.api_keys:
                h = key.get_secret_value()
                key_id = seed_key_id(h)
                by_hash[h] = _Entry(key_id, tenant.name, self._overlay.keys.get(key_id))
        for record in self._overlay.keys.values():
            if not record.seeded and record.tenant in tenants:
                by_hash[record.hash] = _Entry(record.id, record.tenant, record)
        self._tenants, self._by_hash = tenants, by_hash

    def tenants(self) -> dict[str, TenantConfig]:
        return dict(self._tenants)

    def tenant(self, name: str) -> TenantConfig | None:
        return self._tenants.get(name)

    def seed_keys(self, tenant: str) -> list[str]:
        """The hashes of the seed's keys for a tenant."""
        found = self._tenants.get(tenant)
        return [k.get_secret_value() for k in found.api_keys] if found is not None else []

    def identify(self, headers: Mapping[str, str]) -> Identity:
        key = bearer_key(headers)
        if key is None:
            raise missing_key()
        entry = self._by_hash.get(hash_api_key(key))
        if entry is None or (entry.record is not None and not entry.record.active(self._clock())):
            raise AuthenticationFailed(f"Incorrect API key provided: {mask_key(key)}.")
        budgets = entry.record.budgets if entry.record is not None else Budgets()
        return Identity(tenant=self._tenants[entry.tenant], key_id=entry.key_id, key_budgets=budgets)

    def authenticate(self, headers: Mapping[str, str]) -> TenantConfig:
        return self.identify(headers).tenant
