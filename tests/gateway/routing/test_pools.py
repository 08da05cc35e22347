"""Pool choice: model visibility per tenant, smallest fitting context, budgets and caps."""

from __future__ import annotations

import pytest

from sparsegate.gateway.errors import ContextLengthExceeded, ModelNotAllowed, ModelNotFound
from sparsegate.gateway.routing.pools import ModelInfo, PoolTable

from .factories import make_settings, pool, tenant, tenant_of

POOLS = [
    pool("glm-8k", "glm", 8192, ["http://a:1"]),
    pool("glm-32k", "glm", 32768, ["http://b:1"]),
    pool("glm-128k", "glm", 131072, ["http://c:1"]),
    pool("ds-vip", "deepseek", 65536, ["http://d:1"], tenants=["vip"]),
    pool("secret", "internal", 4096, ["http://e:1"]),
]


def table(**overrides: object) -> PoolTable:
    data: dict[str, object] = {
        "tenants": [tenant("acme", ["glm", "internal"]), tenant("vip"), tenant("other", ["glm"])],
        "pools": POOLS,
        "models": [{"name": "internal", "hidden": True}],
    }
    data.update(overrides)
    return PoolTable(make_settings(**data))


def test_list_models_shows_allowed_reachable_unhidden_with_largest_context() -> None:
    t = table()
    s = t.settings
    assert t.list_models(tenant_of(s, "acme")) == [ModelInfo("glm", 131072)]
    assert t.list_models(tenant_of(s, "vip")) == [ModelInfo("deepseek", 65536), ModelInfo("glm", 131072)]


def test_check_model_statuses() -> None:
    t = table()
    s = t.settings
    acme, vip, other = (tenant_of(s, n) for n in ("acme", "vip", "other"))
    t.check_model(acme, "glm")
    t.check_model(acme, "internal")  # hidden, but acme may use it: usable, just unlisted
    with pytest.raises(ModelNotFound, match="`nope` does not exist"):
        t.check_model(acme, "nope")
    with pytest.raises(ModelNotFound):
        t.check_model(acme, "deepseek")  # its only pool is closed to acme: invisible
    with pytest.raises(ModelNotFound):
        t.check_model(other, "internal")  # hidden and not allowed: existence not revealed
    t.check_model(vip, "deepseek")


def test_listed_model_not_allowed_is_403() -> None:
    t = table(pools=[*POOLS, pool("ds-all", "deepseek", 65536, ["http://f:1"])])
    with pytest.raises(ModelNotAllowed) as info:
        t.check_model(tenant_of(t.settings, "other"), "deepseek")
    assert info.value.status_code == 403
    assert info.value.error_code == "model_not_allowed"


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "pool_name"),
    [
        (100, 100, "glm-8k"),
        (4096, 4096, "glm-8k"),  # exactly full still fits
        (4096, 4097, "glm-32k"),
        (100, 30000, "glm-32k"),
        (100_000, 1000, "glm-128k"),
    ],
)
def test_smallest_pool_that_holds_prompt_and_completion(prompt: int, max_tokens: int, pool_name: str) -> None:
    t = table()
    plan = t.plan(tenant_of(t.settings, "acme"), "glm", prompt, max_tokens)
    assert plan.pool.name == pool_name
    assert (plan.prompt_tokens, plan.completion_budget, plan.forced_max_tokens) == (prompt, max_tokens, None)


def test_default_budget_is_used_without_max_tokens() -> None:
    t = table(default_max_tokens=4096)
    acme = tenant_of(t.settings, "acme")
    assert t.plan(acme, "glm", 4096, None).pool.name == "glm-8k"
    plan = t.plan(acme, "glm", 4097, None)
    assert (plan.pool.name, plan.completion_budget, plan.forced_max_tokens) == ("glm-32k", 4096, None)


def test_without_max_tokens_a_long_prompt_gets_the_largest_pools_headroom() -> None:
    t = table(default_max_tokens=4096)
    plan = t.plan(tenant_of(t.settings, "acme"), "glm", 130_000, None)
    assert (plan.pool.name, plan.completion_budget, plan.forced_max_tokens) == ("glm-128k", 1072, None)


def test_tenant_cap_is_the_budget_and_is_forced() -> None:
    capped = tenant("acme", ["glm"], limits={"max_tokens": 1000})
    t = table(tenants=[capped, tenant("vip")])
    acme = tenant_of(t.settings, "acme")
    plan = t.plan(acme, "glm", 7000, None)
    assert (plan.pool.name, plan.completion_budget, plan.forced_max_tokens) == ("glm-8k", 1000, 1000)
    plan = t.plan(acme, "glm", 7000, 5000)  # asked for more than the cap: a cap is a cap
    assert (plan.pool.name, plan.completion_budget, plan.forced_max_tokens) == ("glm-8k", 1000, 1000)
    plan = t.plan(acme, "glm", 7000, 500)
    assert (plan.completion_budget, plan.forced_max_tokens) == (500, None)
    plan = t.plan(acme, "glm", 130_500, None)  # cap doesn't fit anywhere: headroom, forced down to it
    assert (plan.pool.name, plan.completion_budget, plan.forced_max_tokens) == ("glm-128k", 572, 572)


def test_per_model_cap_tightens_the_tenant_cap() -> None:
    acme = tenant("acme", ["glm"], limits={"max_tokens": 1000}, model_limits={"glm": {"max_tokens": 200}})
    t = table(tenants=[acme, tenant("vip")])
    plan = t.plan(tenant_of(t.settings, "acme"), "glm", 10, None)
    assert (plan.completion_budget, plan.forced_max_tokens) == (200, 200)


def test_context_length_exceeded_names_both_numbers() -> None:
    t = table()
    acme = tenant_of(t.settings, "acme")
    with pytest.raises(ContextLengthExceeded) as info:
        t.plan(acme, "glm", 130_000, 2000)
    err = info.value
    assert err.status_code == 400
    assert err.error_code == "context_length_exceeded"
    assert err.param == "messages"
    assert "maximum context length is 131072 tokens" in err.message
    assert "you requested 132000 tokens (130000 in the messages, 2000 in the completion)" in err.message


def test_prompt_alone_over_every_pool_is_exceeded_even_without_max_tokens() -> None:
    t = table(default_max_tokens=4096)
    with pytest.raises(ContextLengthExceeded, match=r"131072 tokens\. However, you requested 135168"):
        t.plan(tenant_of(t.settings, "acme"), "glm", 131072, None)


def test_pool_restricted_to_other_tenants_is_not_a_candidate() -> None:
    pools = [pool("small", "glm", 8192, ["http://a:1"]), pool("big-vip", "glm", 65536, ["http://b:1"], tenants=["vip"])]
    t = table(pools=pools, models=[])
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 8192"):
        t.plan(tenant_of(t.settings, "acme"), "glm", 20_000, 100)
    assert t.plan(tenant_of(t.settings, "vip"), "glm", 20_000, 100).pool.name == "big-vip"


def test_plan_for_unknown_model_is_404() -> None:
    t = table()
    with pytest.raises(ModelNotFound):
        t.plan(tenant_of(t.settings, "acme"), "gpt-4", 10, 10)
