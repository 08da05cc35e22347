"""API-key authentication: a bearer key maps to a tenant through its SHA-256 hash.

Keys are never stored or logged in the clear. The error message shows only a masked form, like OpenAI's.
"""

from __future__ import annotations

from collections.abc import Mapping

from sparsegate.gateway.errors import AuthenticationFailed
from sparsegate.gateway.settings import Settings, TenantConfig, hash_api_key


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


class KeyStore:
    """Maps key hashes to tenants; rebuilt whole on config reload."""

    def __init__(self, settings: Settings) -> None:
        self._by_hash: dict[str, TenantConfig] = {
            key.get_secret_value(): tenant for tenant in settings.tenants for key in tenant.api_keys
        }

    def authenticate(self, headers: Mapping[str, str]) -> TenantConfig:
        key = bearer_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        tenant = self._by_hash.get(hash_api_key(key))
        if tenant is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {mask_key(key)}.")
        return tenant
