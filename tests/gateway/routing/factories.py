"""Settings builders for routing tests."""

from __future__ import annotations

from typing import Any

from sparsegate.gateway.settings import Settings, TenantConfig, hash_api_key


def tenant(name: str = "acme", models: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "api_keys": [hash_api_key(f"key-{name}")], "models": models or ["*"], **extra}


def pool(name: str, model: str, max_context: int, workers: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": model, "max_context": max_context, "workers": workers, **extra}


def make_settings(**data: Any) -> Settings:
    data.setdefault("tenants", [tenant()])
    data.setdefault(
        "pools",
        [
            pool("short", "glm", 8192, ["http://s1:30000", "http://s2:30000"]),
            pool("long", "glm", 131072, ["http://l1:30000"]),
        ],
    )
    return Settings(**data)


def tenant_of(settings: Settings, name: str = "acme") -> TenantConfig:
    return next(t for t in settings.tenants if t.name == name)
