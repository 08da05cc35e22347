"""What the admin routes do: tenants and keys changed through the store, read back through the key store."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sparsegate.gateway.admin.model import AdminState, KeyRecord, TenantSpec, seed_key_id
from sparsegate.gateway.admin.store import AdminStore
from sparsegate.gateway.auth import KeyStore, bearer_key, mask_key, missing_key
from sparsegate.gateway.errors import AuthenticationFailed, InvalidRequest, ResourceNotFound
from sparsegate.gateway.ledger.service import Ledger
from sparsegate.gateway.settings import Budgets, TenantConfig, hash_api_key

KEY_PREFIX = "sk-sg-"
SHOWN_PREFIX = len(KEY_PREFIX) + 6  # how much of a key a listing shows


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass
class Admin:
    """The admin API's state: the store (shared), the gateway's key store (fed by the store) and the admin keys."""

    store: AdminStore
    keys: KeyStore
    admin_hashes: Callable[[], set[str]]
    ledger: Ledger | None = None
    clock: Callable[[], float] = field(default=time.time)

    async def start(self) -> None:
        await self.store.start(self.keys.apply)

    async def close(self) -> None:
        await self.store.close()

    def check_admin(self, headers: Mapping[str, str]) -> None:
        """401 unless the bearer key is an admin key; a tenant's key is refused the same way as an unknown one."""
        key = bearer_key(headers)
        if key is None:
            raise missing_key()
        if hash_api_key(key) not in self.admin_hashes():
            raise AuthenticationFailed(f"Incorrect admin API key provided: {mask_key(key)}.")

    # -- tenants ------------------------------------------------------------------------------------------------------

    def _describe(self, tenant: TenantConfig, state: AdminState) -> dict[str, Any]:
        seeded = any(t.name == tenant.name for t in self.keys.seed.tenants)
        source = ("config+api" if seeded else "api") if tenant.name in state.tenants else "config"
        return {
            "name": tenant.name,
            "models": tenant.models,
            "limits": tenant.limits.model_dump(),
            "budgets": tenant.budgets.model_dump(),
            "model_limits": {m: lim.model_dump() for m, lim in tenant.model_limits.items()},
            "priority": tenant.priority,
            "weight": tenant.weight,
            "on_limiter_failure": tenant.on_limiter_failure,
            "source": source,
        }

    async def put_tenant(self, spec: TenantSpec) -> dict[str, Any]:
        state = await self.store.put_tenant(spec)
        tenant = self.keys.tenant(spec.name)
        assert tenant is not None  # the store hands every new snapshot to the key store before returning
        return self._describe(tenant, state)

    def list_tenants(self) -> list[dict[str, Any]]:
        state = self.keys.overlay
        return [self._describe(t, state) for t in sorted(self.keys.tenants().values(), key=lambda t: t.name)]

    def _tenant(self, name: str) -> TenantConfig:
        tenant = self.keys.tenant(name)
        if tenant is None:
            raise ResourceNotFound(f"No tenant named {name!r}.", param="name")
        return tenant

    # -- keys ---------------------------------------------------------------------------------------------------------

    async def create_key(self, tenant_name: str, budgets: Budgets, expires_in_s: float | None = None) -> dict[str, Any]:
        tenant = self._tenant(tenant_name)
        plain = new_key()
        now = self.clock()
        record = KeyRecord(
            id=f"key-{secrets.token_hex(8)}",
            tenant=tenant.name,
            hash=hash_api_key(plain),
            prefix=plain[:SHOWN_PREFIX],
            created=now,
            expires_at=None if expires_in_s is None else now + expires_in_s,
            budgets=budgets,
        )
        await self.store.put_key(record)
        return {**record.public(), "key": plain}

    def _records(self, tenant: str) -> list[KeyRecord]:
        """Every key of a tenant, the seed's included (as the admin API sees them, or plain)."""
        state = self.keys.overlay
        out = []
        for h in self.keys.seed_keys(tenant):
            key_id = seed_key_id(h)
            out.append(state.keys.get(key_id) or KeyRecord(id=key_id, tenant=tenant, hash=h, created=0, seeded=True))
        out += [r for r in state.keys.values() if r.tenant == tenant and not r.seeded]
        return out

    def list_keys(self, tenant_name: str) -> list[dict[str, Any]]:
        tenant = self._tenant(tenant_name)
        now = self.clock()
        return [r.public() for r in self._records(tenant.name) if r.active(now)]

    def _find_key(self, key_id: str) -> KeyRecord:
        now = self.clock()
        for name in self.keys.tenants():
            for record in self._records(name):
                if record.id == key_id and record.active(now):
                    return record
        raise ResourceNotFound(f"No active key with id {key_id!r}.", param="id")

    async def revoke(self, key_id: str) -> dict[str, Any]:
        record = self._find_key(key_id)
        await self.store.put_key(record.model_copy(update={"expires_at": self.clock()}))
        return {"id": record.id, "tenant": record.tenant, "revoked": True}

    async def rotate(self, key_id: str, overlap_s: float) -> dict[str, Any]:
        """A new key for the same tenant (and the same budgets); the old one works for `overlap_s` more seconds."""
        if overlap_s < 0:
            raise InvalidRequest("overlap_s must be 0 or more seconds.", param="overlap_s")
        old = self._find_key(key_id)
        created = await self.create_key(old.tenant, old.budgets)
        ends = self.clock() + overlap_s
        if old.expires_at is None or ends < old.expires_at:
            await self.store.put_key(old.model_copy(update={"expires_at": ends}))
        return {**created, "replaces": old.id, "old_key_expires_at": int(min(ends, old.expires_at or ends))}
