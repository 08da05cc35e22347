"""Which pool serves a request: model visibility per tenant, and the smallest context that holds the request.

Visibility rules (GATEWAY.md §1):
- a model no pool serves, or that no pool open to the tenant serves, is unknown to the tenant: 404;
- a model the tenant may use, served by a pool open to it, is usable, even when `hidden` (hidden models are
  only left out of `/v1/models`);
- a listed (not hidden) model the tenant may not use, but served by a pool open to it: 403;
- a hidden model the tenant may not use: 404, so its existence is not revealed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ContextLengthExceeded, ModelNotAllowed, ModelNotFound
from ..settings import PoolConfig, Settings, TenantConfig


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_context: int


@dataclass(frozen=True)
class RoutePlan:
    """Where a request goes and what it may cost.

    `completion_budget` is the completion tokens reserved for it (what the limiter charges up front);
    `forced_max_tokens`, when set, must replace the request's `max_tokens` before it is sent upstream.
    """

    pool: PoolConfig
    prompt_tokens: int
    completion_budget: int
    forced_max_tokens: int | None


def _not_found(model: str) -> ModelNotFound:
    return ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class PoolTable:
    """The pools and models of one `Settings`, indexed for lookups on every request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_model: dict[str, list[PoolConfig]] = {}
        for pool in sorted(settings.pools, key=lambda p: (p.max_context, p.name)):
            self._by_model.setdefault(pool.model, []).append(pool)
        self._hidden = {m.name for m in settings.models if m.hidden}
        self._by_name = {p.name: p for p in settings.pools}

    def pool(self, name: str) -> PoolConfig | None:
        return self._by_name.get(name)

    def open_pools(self, tenant: TenantConfig, model: str) -> list[PoolConfig]:
        """Pools serving `model` that `tenant` may use, smallest `max_context` first."""
        return [p for p in self._by_model.get(model, ()) if p.tenants is None or tenant.name in p.tenants]

    def list_models(self, tenant: TenantConfig) -> list[ModelInfo]:
        out = []
        for model in sorted(self._by_model):
            if model in self._hidden or not tenant.may_use(model):
                continue
            pools = self.open_pools(tenant, model)
            if pools:
                out.append(ModelInfo(id=model, max_context=pools[-1].max_context))
        return out

    def check_model(self, tenant: TenantConfig, model: str) -> list[PoolConfig]:
        """Raise unless the tenant may use `model`; return its open pools (never empty)."""
        pools = self.open_pools(tenant, model)
        if not pools:
            raise _not_found(model)
        if tenant.may_use(model):
            return pools
        if model in self._hidden:
            raise _not_found(model)
        raise ModelNotAllowed(f"Your API key is not allowed to use the model `{model}`.", param="model")

    def completion_cap(self, tenant: TenantConfig, model: str) -> int | None:
        """The tenant's completion cap for `model`: the tighter of its general and per-model `max_tokens`."""
        caps = [tenant.limits.max_tokens]
        per_model = tenant.model_limits.get(model)
        if per_model is not None:
            caps.append(per_model.max_tokens)
        present = [c for c in caps if c is not None]
        return min(present) if present else None

    def plan(self, tenant: TenantConfig, model: str, prompt_tokens: int, max_tokens: int | None) -> RoutePlan:
        pools = self.check_model(tenant, model)
        cap = self.completion_cap(tenant, model)
        if max_tokens is not None:
            budget = max_tokens if cap is None else min(max_tokens, cap)
        else:
            budget = cap if cap is not None else self.settings.default_max_tokens
        forced = cap if cap is not None and (max_tokens is None or max_tokens > cap) else None

        for pool in pools:  # smallest max_context first
            if prompt_tokens + budget <= pool.max_context:
                return RoutePlan(pool, prompt_tokens, budget, forced)
        if max_tokens is None:
            # The client named no budget: rather than refuse, give the largest pool that holds the prompt
            # and let the completion have whatever context is left.
            roomy = [p for p in pools if prompt_tokens < p.max_context]
            if roomy:
                pool = roomy[-1]
                headroom = pool.max_context - prompt_tokens
                return RoutePlan(pool, prompt_tokens, headroom, headroom if cap is not None else None)
        raise ContextLengthExceeded(
            max_context=pools[-1].max_context, prompt_tokens=prompt_tokens, completion_tokens=budget
        )
