"""The façade: picks and releases, health-driven eligibility, reload, readiness, counting and affinity keys."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sparsegate.gateway.errors import ContextLengthExceeded, ModelNotAllowed, NoHealthyWorker
from sparsegate.gateway.routing import Router, Worker
from sparsegate.gateway.routing import router as router_module
from sparsegate.gateway.routing.policies import LeastOutstanding, PowerOfTwo, PrefixAffinity
from sparsegate.gateway.settings import Settings

from .factories import make_settings, pool, tenant, tenant_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        yield client


def three_worker_settings(policy: str = "least_outstanding", **extra: object) -> Settings:
    return make_settings(
        pools=[pool("p", "glm", 8192, ["http://a:1", "http://b:1", "http://c:1"], policy=policy)],
        health={"failure_threshold": 2, "open_s": 10.0},
        **extra,
    )


def test_pick_and_release_track_in_flight(http: httpx.AsyncClient) -> None:
    router = Router(three_worker_settings(), http)
    picked = [router.pick_worker("p", "k") for _ in range(6)]
    assert sorted(w.in_flight for w in router.workers()) == [2, 2, 2]
    for w in picked:
        router.release(w, "ok")
    assert all(w.in_flight == 0 for w in router.workers())
    assert sum(w.picks for w in router.workers()) == 6


def test_exclude_skips_tried_workers_then_503(http: httpx.AsyncClient) -> None:
    router = Router(three_worker_settings(), http)
    tried: list[str] = []
    for _ in range(3):
        w = router.pick_worker("p", "k", exclude=tried)
        assert w.url not in tried
        tried.append(w.url)
    with pytest.raises(NoHealthyWorker) as info:
        router.pick_worker("p", "k", exclude=tried)
    assert info.value.status_code == 503
    assert info.value.headers() == {"retry-after": "1"}


def test_passive_failures_open_the_breaker_and_half_open_lets_one_trial(http: httpx.AsyncClient) -> None:
    clock = FakeClock()
    router = Router(three_worker_settings(), http, clock=clock)
    bad = next(w for w in router.workers() if w.url == "http://b:1")
    for outcome in ("connect_error", "timeout"):
        bad.in_flight += 1
        router.release(bad, outcome)
    assert bad.state == "open"
    assert router.readiness() == {"p": {"healthy": 2, "total": 3}}
    assert all(router.pick_worker("p", "k").url != bad.url for _ in range(20))
    clock.now += 10.0
    assert bad.state == "half_open"
    trial = router.pick_worker("p", "k", exclude=["http://a:1", "http://c:1"])
    assert trial is bad
    with pytest.raises(NoHealthyWorker):  # only one trial at a time
        router.pick_worker("p", "k", exclude=["http://a:1", "http://c:1"])
    router.release(trial, "ok")
    assert bad.state == "closed"


def test_client_errors_prove_the_worker_is_up_and_cancels_say_nothing(http: httpx.AsyncClient) -> None:
    router = Router(three_worker_settings(), http)
    w = router.pick_worker("p", "k")
    router.release(w, "upstream_error")
    w = router.pick_worker("p", "k", exclude=[x.url for x in router.workers() if x is not w])
    router.release(w, "client_error")
    assert w.breaker.failures == 0
    router.release(router.pick_worker("p", "k"), "cancelled")
    assert all(x.state == "closed" for x in router.workers())


def test_no_healthy_worker_retry_after_is_the_soonest_half_open(http: httpx.AsyncClient) -> None:
    clock = FakeClock()
    router = Router(three_worker_settings(), http, clock=clock)
    for i, w in enumerate(router.workers()):
        clock.now = float(i)  # opened at 0, 1, 2 s
        for _ in range(2):
            router.release(w, "connect_error")
    clock.now = 3.0
    assert router.readiness() == {"p": {"healthy": 0, "total": 3}}
    with pytest.raises(NoHealthyWorker) as info:
        router.pick_worker("p", "k")
    assert info.value.retry_after_s == pytest.approx(7.0)
    assert info.value.headers() == {"retry-after": "7"}


def test_unknown_pool_is_503(http: httpx.AsyncClient) -> None:
    with pytest.raises(NoHealthyWorker):
        Router(three_worker_settings(), http).pick_worker("gone", "k")


def test_policy_per_pool_from_config(http: httpx.AsyncClient) -> None:
    settings = make_settings(
        pools=[
            pool("a", "glm", 8192, ["http://a:1"], policy="least_outstanding"),
            pool("b", "glm", 16384, ["http://b:1"], policy="power_of_two"),
            pool("c", "glm", 32768, ["http://c:1"]),
        ]
    )
    router = Router(settings, http)
    assert isinstance(router.policy("a"), LeastOutstanding)
    assert isinstance(router.policy("b"), PowerOfTwo)
    assert isinstance(router.policy("c"), PrefixAffinity)  # the default


def test_reload_keeps_worker_state_and_in_flight_workers_stay_valid(http: httpx.AsyncClient) -> None:
    router = Router(three_worker_settings(), http)
    a = next(w for w in router.workers() if w.url == "http://a:1")
    c = next(w for w in router.workers() if w.url == "http://c:1")
    for w in (a, c):
        w.in_flight += 1
    router.release(a, "connect_error")
    a.in_flight += 1
    policy = router.policy("p")
    new = make_settings(
        pools=[
            pool("p", "glm", 8192, ["http://a:1", "http://b:1", "http://d:1"], policy="least_outstanding"),
            pool("q", "glm", 65536, ["http://e:1"]),
        ],
        health={"failure_threshold": 5, "open_s": 1.0},
    )
    router.reload(new)
    assert router.settings is new
    kept = next(w for w in router.workers() if w.url == "http://a:1")
    assert kept is a and a.in_flight == 1 and a.breaker.failures == 1
    assert a.breaker.failure_threshold == 5
    assert router.policy("p") is not policy  # membership changed: a new ring / rotation
    assert {w.url for w in router.workers()} == {"http://a:1", "http://b:1", "http://d:1", "http://e:1"}
    router.release(c, "ok")  # c left the config while its request was in flight: harmless
    assert c.in_flight == 0
    assert set(router.readiness()) == {"p", "q"}
    assert router.plan(tenant_of(new), "glm", 20_000, 100).pool.name == "q"


def test_reload_with_same_pool_keeps_policy(http: httpx.AsyncClient) -> None:
    router = Router(three_worker_settings(), http)
    policy = router.policy("p")
    router.reload(three_worker_settings(default_max_tokens=100))
    assert router.policy("p") is policy


def test_reload_with_a_bad_tokenizer_changes_nothing(http: httpx.AsyncClient, tmp_path: Path) -> None:
    from sparsegate.gateway.settings import ConfigError

    router = Router(three_worker_settings(), http)
    before = router.settings
    with pytest.raises(ConfigError):
        router.reload(three_worker_settings(models=[{"name": "glm", "tokenizer": str(tmp_path / "x.json")}]))
    assert router.settings is before


def test_models_and_plans_through_the_facade(http: httpx.AsyncClient) -> None:
    settings = make_settings(tenants=[tenant("acme", ["other"]), tenant("vip")])
    router = Router(settings, http)
    acme, vip = tenant_of(settings, "acme"), tenant_of(settings, "vip")
    assert router.list_models(acme) == []
    assert [(m.id, m.max_context) for m in router.list_models(vip)] == [("glm", 131072)]
    with pytest.raises(ModelNotAllowed):
        router.check_model(acme, "glm")
    router.check_model(vip, "glm")
    assert router.plan(vip, "glm", 10, 10).pool.name == "short"
    with pytest.raises(ContextLengthExceeded):
        router.plan(vip, "glm", 200_000, 10)


def test_exact_counting_with_a_configured_tokenizer(http: httpx.AsyncClient, tokenizer_path: Path) -> None:
    settings = make_settings(models=[{"name": "glm", "tokenizer": str(tokenizer_path)}])
    router = Router(settings, http)
    messages = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 3}]
    exact = router.count_prompt_tokens("glm", messages=messages)
    estimate = router.count_prompt_tokens("unknown-model", messages=messages)
    assert exact < estimate
    assert router.count_prompt_tokens("glm", prompt=[1, 2, 3]) == 3


async def test_async_counting_offloads_big_prompts(
    http: httpx.AsyncClient, tokenizer_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(models=[{"name": "glm", "tokenizer": str(tokenizer_path)}])
    router = Router(settings, http)
    small = [{"role": "user", "content": "hi"}]
    big = [{"role": "user", "content": "word " * 20_000}]
    assert await router.count_prompt_tokens_async("glm", messages=small) == router.count_prompt_tokens(
        "glm", messages=small
    )
    threads: list[object] = []
    real_to_thread = router_module.asyncio.to_thread

    async def spy(fn: object, /, *args: object, **kwargs: object) -> object:
        threads.append(fn)
        return await real_to_thread(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(router_module.asyncio, "to_thread", spy)
    assert await router.count_prompt_tokens_async("glm", messages=big) == router.count_prompt_tokens(
        "glm", messages=big
    )
    assert len(threads) == 1
    await router.count_prompt_tokens_async("glm", messages=small)
    assert len(threads) == 1


def test_affinity_key_is_a_stable_prefix_digest(http: httpx.AsyncClient) -> None:
    router = Router(three_worker_settings(), http)
    system = {"role": "system", "content": "S" * 2000}
    k1 = router.affinity_key(messages=[system, {"role": "user", "content": "one"}])
    k2 = router.affinity_key(messages=[system, {"role": "user", "content": "two"}])
    assert k1 == k2  # the long shared system prompt decides
    short = {"role": "system", "content": "be brief"}
    a = router.affinity_key(messages=[short, {"role": "user", "content": "one"}])
    b = router.affinity_key(messages=[short, {"role": "user", "content": "two"}])
    turn2 = router.affinity_key(
        messages=[short, {"role": "user", "content": "one"}, {"role": "assistant", "content": "x"}]
    )
    assert a != b and turn2 == a
    parts = [short, {"role": "user", "content": [{"type": "text", "text": "one"}]}]
    assert router.affinity_key(messages=parts) == a
    assert router.affinity_key(prompt="abc") == router.affinity_key(prompt=["abc", "zzz"])
    assert router.affinity_key(prompt=[1, 2, 3]) == router.affinity_key(prompt=[[1, 2, 3]])
    assert len(k1) == 16


def test_default_policy_keeps_a_prefix_home_then_spreads_it(http: httpx.AsyncClient) -> None:
    settings = make_settings(pools=[pool("p", "glm", 8192, [f"http://w{i}:1" for i in range(4)])])
    router = Router(settings, http, rng=random.Random(0))
    key = router.affinity_key(messages=[{"role": "system", "content": "hot"}])
    home = router.pick_worker("p", key)
    router.release(home, "ok")
    for _ in range(30):  # sequential: always home
        w = router.pick_worker("p", key)
        assert w is home
        router.release(w, "ok")
    held = [router.pick_worker("p", key) for _ in range(40)]  # concurrent: bounded, then spread
    assert len({w.url for w in held}) == 4
    assert home.in_flight <= 1.5 * 40 / 4 + 3


def test_balance_under_uniform_load(http: httpx.AsyncClient) -> None:
    settings = make_settings(pools=[pool("p", "glm", 8192, [f"http://w{i}:1" for i in range(8)])])
    router = Router(settings, http, rng=random.Random(0))
    rng = random.Random(1)
    live: list[Worker] = []
    n = 8000
    for i in range(n):
        w = router.pick_worker("p", router.affinity_key(messages=[{"role": "user", "content": f"q{i}"}]))
        live.append(w)
        if len(live) > 32:
            router.release(live.pop(rng.randrange(len(live))), "ok")
    mean = n / 8
    assert max(w.picks for w in router.workers()) <= 1.2 * mean
