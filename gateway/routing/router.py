"""The routing façade the request pipeline calls: models, token counts, pool plans, worker picks and health.

One `Router` lives in the app's lifespan. Per request the pipeline calls, in order:

    router.check_model(tenant, model)
    n = await router.count_prompt_tokens_async(model, messages=...)
    plan = router.plan(tenant, model, n, max_tokens)           # may raise ContextLengthExceeded
    worker = router.pick_worker(plan.pool.name, router.affinity_key(messages=...), exclude=tried)
    ... send to worker.url ...
    router.release(worker, outcome)                           # exactly once per pick

Everything here is synchronous and cheap except counting very large prompts, which `count_prompt_tokens_async`
moves to a thread. The router holds no global state; `reload` swaps pools and tenants atomically while Worker
objects of unchanged (pool, URL) pairs, with their in-flight counts and breakers, carry over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Collection, Iterator
from typing import Any

import httpx

from ..breaker import CircuitBreaker, Clock
from ..errors import ContextLengthExceeded, NoHealthyWorker
from ..settings import PoolConfig, Settings, TenantConfig
from .health import HealthMonitor
from .policies import Outcome, Policy, make_policy
from .pools import ModelInfo, PoolTable, RoutePlan
from .remote_count import WorkerTokenCounter
from .tokens import Messages, Prompt, TokenCounters, text_size
from .workers import Worker

log = logging.getLogger(__name__)

# Prompts with more text than this are counted on a thread so the event loop keeps serving other requests.
# A tokenizer encodes roughly 0.5-1M tokens/s, so 8 KiB (~2K tokens) is a few ms: about what a thread hop
# is worth. The estimate does ~1 GB/s, so it stays on the loop until the text is really big.
OFFLOAD_CHARS_EXACT = 8 * 1024
OFFLOAD_CHARS_ESTIMATE = 1024 * 1024
# Affinity is decided by the conversation's opening: the messages up to and including the first user message,
# at most this many characters of them. Every later turn of a conversation starts the same way, so it goes back
# to the worker that has its earlier turns cached; requests sharing a long system prompt hash alike too.
AFFINITY_PREFIX_CHARS = 1024
# Workers asked in turn for an exact count before the estimate is used after all.
REMOTE_COUNT_WORKERS = 2

_FAILURES: frozenset[str] = frozenset({"connect_error", "upstream_error", "timeout"})
_SUCCESSES: frozenset[str] = frozenset({"ok", "client_error"})  # a 4xx answer still proves the worker is up


class _Pool:
    __slots__ = ("config", "members", "policy")

    def __init__(self, config: PoolConfig, members: list[Worker], policy: Policy) -> None:
        self.config = config
        self.members = members
        self.policy = policy


class Router:
    """Routing state for one gateway replica. See the module docstring for the call sequence."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._clock = clock
        self._rng = rng
        self._workers: dict[tuple[str, str], Worker] = {}
        self._pools: dict[str, _Pool] = {}
        self._monitor = HealthMonitor(http, settings.health, clock)
        self.remote_counts = WorkerTokenCounter(http)
        self._apply(settings, TokenCounters(settings.models))

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start probing and load polling every worker."""
        await self._monitor.start()

    async def close(self) -> None:
        await self._monitor.close()

    def reload(self, settings: Settings) -> None:
        """Switch to new pools, tenants and models. Raises `ConfigError` (changing nothing) if a tokenizer
        cannot be loaded. Requests in flight keep their Worker objects; `release` on a worker that left the
        config is harmless."""
        counters = TokenCounters(settings.models, previous=self._counters)
        self._apply(settings, counters)
        log.info("routing reloaded: %d pools, %d workers", len(self._pools), len(self._workers))

    def _apply(self, settings: Settings, counters: TokenCounters) -> None:
        health = settings.health
        workers: dict[tuple[str, str], Worker] = {}
        pools: dict[str, _Pool] = {}
        for config in settings.pools:
            members = []
            for url in config.workers:
                w = self._workers.get((config.name, url))
                if w is None:
                    w = Worker(url, config.name, CircuitBreaker(health.failure_threshold, health.open_s, self._clock))
                else:
                    w.breaker.failure_threshold = health.failure_threshold
                    w.breaker.open_s = health.open_s
                workers[(config.name, url)] = w
                members.append(w)
            old = self._pools.get(config.name)
            if old is not None and old.config.policy == config.policy and old.members == members:
                policy = old.policy
            else:
                policy = make_policy(config.policy, members, self._rng)
            pools[config.name] = _Pool(config, members, policy)
        table = PoolTable(settings)
        # Swap everything at once: a request sees either the old routing table or the new one.
        self.settings = settings
        self._table = table
        self._counters = counters
        self._workers = workers
        self._pools = pools
        self._monitor.settings = health
        self._monitor.track(workers.values())

    # -- models and plans --------------------------------------------------------------------------------

    def list_models(self, tenant: TenantConfig) -> list[ModelInfo]:
        """Models the tenant may use and can reach, not hidden; each with its largest pool's context."""
        return self._table.list_models(tenant)

    def check_model(self, tenant: TenantConfig, model: str) -> None:
        """`ModelNotFound` (404) if unknown or invisible to the tenant, `ModelNotAllowed` (403) if not theirs."""
        self._table.check_model(tenant, model)

    def plan(self, tenant: TenantConfig, model: str, prompt_tokens: int, max_tokens: int | None) -> RoutePlan:
        """The smallest pool open to the tenant whose context holds the prompt and the completion budget.

        Raises `ModelNotFound` / `ModelNotAllowed` as `check_model`, and `ContextLengthExceeded` when no pool
        holds the request (naming the largest candidate's context and the requested total).
        """
        return self._table.plan(tenant, model, prompt_tokens, max_tokens)

    # -- token counting ----------------------------------------------------------------------------------

    def count_prompt_tokens(
        self,
        model: str,
        *,
        messages: Messages | None = None,
        prompt: Prompt | None = None,
        tools: Any = None,
    ) -> int:
        """Prompt tokens: exact with the model's tokenizer, a never-low estimate without (see `tokens`)."""
        return self._counters.for_model(model).count(messages=messages, prompt=prompt, tools=tools)

    async def count_prompt_tokens_async(
        self,
        model: str,
        *,
        messages: Messages | None = None,
        prompt: Prompt | None = None,
        tools: Any = None,
    ) -> int:
        """As `count_prompt_tokens`, on a worker thread when the prompt is large (see `OFFLOAD_CHARS_*`)."""
        counter = self._counters.for_model(model)
        limit = OFFLOAD_CHARS_EXACT if counter.exact else OFFLOAD_CHARS_ESTIMATE
        if text_size(messages, prompt, tools) > limit:
            return await asyncio.to_thread(counter.count, messages=messages, prompt=prompt, tools=tools)
        return counter.count(messages=messages, prompt=prompt, tools=tools)

    async def count_for_plan(
        self,
        tenant: TenantConfig,
        model: str,
        max_tokens: int | None,
        *,
        messages: Messages | None = None,
        prompt: Prompt | None = None,
        tools: Any = None,
    ) -> int:
        """The prompt count to plan with: `count_prompt_tokens_async`, unless the model has no tokenizer and the
        byte estimate would send the request past its smallest open pool (or refuse it). Then the texts are
        counted by a healthy worker of the model (`remote_count`), falling back to the estimate."""
        counted = await self.count_prompt_tokens_async(model, messages=messages, prompt=prompt, tools=tools)
        if self._counters.for_model(model).exact:
            return counted
        pools = self._table.check_model(tenant, model)
        try:
            if self._table.plan(tenant, model, counted, max_tokens).pool.name == pools[0].name:
                return counted  # already the smallest pool: an exact count could not change the route
        except ContextLengthExceeded:
            pass
        workers = [w.url for p in pools for w in self._pools[p.name].members if w.healthy][:REMOTE_COUNT_WORKERS]
        exact = await self.remote_counts.count(workers, model, messages=messages, prompt=prompt, tools=tools)
        return counted if exact is None else min(exact, counted)

    # -- worker choice -----------------------------------------------------------------------------------

    def affinity_key(self, *, messages: Messages | None = None, prompt: Prompt | None = None) -> str:
        """A short stable digest of the prompt's opening (see `AFFINITY_PREFIX_CHARS`), roles included."""
        parts: list[str] = []
        size = 0
        if messages:
            for m in messages:
                content = m.get("content")
                if isinstance(content, list):
                    content = "".join(
                        p.get("text", "") if isinstance(p, dict) and isinstance(p.get("text"), str) else ""
                        for p in content
                    )
                piece = f"{m.get('role', '')}\x1f{content if isinstance(content, str) else ''}\x1e"
                parts.append(piece)
                size += len(piece)
                if size >= AFFINITY_PREFIX_CHARS or m.get("role") == "user":
                    break
        elif isinstance(prompt, str):
            parts.append(prompt[:AFFINITY_PREFIX_CHARS])
        elif prompt:
            first = prompt[0]
            if isinstance(first, str):
                parts.append(first[:AFFINITY_PREFIX_CHARS])
            elif isinstance(first, list):
                parts.append(",".join(str(t) for t in first[: AFFINITY_PREFIX_CHARS // 4]))
            else:
                parts.append(",".join(str(t) for t in prompt[: AFFINITY_PREFIX_CHARS // 4]))
        text = "".join(parts)[:AFFINITY_PREFIX_CHARS]
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()

    def pick_worker(self, pool: str, affinity_key: str, exclude: Collection[str] = ()) -> Worker:
        """A healthy worker of `pool` by the pool's policy, skipping URLs in `exclude` (already tried).

        Counts the request as in flight on it; call `release` exactly once when the attempt ends. Raises
        `NoHealthyWorker` (503 with retry-after) when no eligible worker is left.
        """
        state = self._pools.get(pool)
        if state is None:
            raise NoHealthyWorker(f"No worker is available for pool '{pool}' right now.", retry_after_s=1.0)
        if exclude:
            candidates = [w for w in state.members if w.breaker.allows() and w.url not in exclude]
        else:
            candidates = [w for w in state.members if w.breaker.allows()]
        if not candidates:
            wait = self._retry_after(state, exclude)
            raise NoHealthyWorker(
                f"No healthy worker is available in pool '{pool}' right now; please retry in {round(wait)} s.",
                retry_after_s=wait,
            )
        worker = state.policy.select(candidates, affinity_key)
        worker.breaker.claim_trial()
        worker.in_flight += 1
        worker.picks += 1
        return worker

    def pick_pinned(self, pool: str, url: str) -> Worker:
        """The worker `url` of `pool`, for a request only it can answer (a stored response lives there), counted
        in flight like `pick_worker`. `NoHealthyWorker` when it left the pool or its breaker is open."""
        state = self._pools.get(pool)
        worker = self._workers.get((pool, url))
        if state is None or worker is None:
            raise NoHealthyWorker("The worker that holds this response is no longer configured.", retry_after_s=1.0)
        if not worker.breaker.allows():
            raise NoHealthyWorker(
                "The worker that holds this response is unavailable right now; please retry shortly.",
                retry_after_s=max(1.0, worker.breaker.reopens_in()),
            )
        worker.breaker.claim_trial()
        worker.in_flight += 1
        worker.picks += 1
        return worker

    def open_pools(self, tenant: TenantConfig, model: str) -> list[PoolConfig]:
        """The pools serving `model` that `tenant` may use, smallest context first."""
        return self._table.open_pools(tenant, model)

    def pool_config(self, name: str) -> PoolConfig | None:
        return self._table.pool(name)

    def _retry_after(self, state: _Pool, exclude: Collection[str]) -> float:
        if any(w.eligible for w in state.members):
            return 1.0  # healthy workers exist; this request has simply tried them all
        waits = [w.breaker.reopens_in() for w in state.members]
        soonest = min((t for t in waits if t > 0), default=self.settings.health.probe_interval_s)
        return min(120.0, max(1.0, soonest))

    def release(self, worker: Worker, outcome: Outcome, latency_s: float | None = None) -> None:
        """End one attempt on `worker`: in-flight down, outcome to its breaker and the pool's policy."""
        worker.in_flight = max(0, worker.in_flight - 1)
        before = worker.state
        if outcome in _FAILURES:
            worker.breaker.record_failure()
        elif outcome in _SUCCESSES:
            worker.breaker.record_success()
        else:
            worker.breaker.record_neutral()
        if worker.state != before:
            log.warning(
                "worker %s (pool %s): %s -> %s after %s", worker.url, worker.pool, before, worker.state, outcome
            )
        state = self._pools.get(worker.pool)
        if state is not None and self._workers.get((worker.pool, worker.url)) is worker:
            state.policy.observe(worker, outcome, latency_s)

    # -- status --------------------------------------------------------------------------------------------

    def readiness(self) -> dict[str, dict[str, int]]:
        """Per pool: workers with a closed breaker, and all workers. A pool with 0 healthy cannot serve."""
        return {
            name: {"healthy": sum(1 for w in state.members if w.healthy), "total": len(state.members)}
            for name, state in self._pools.items()
        }

    def workers(self) -> Iterator[Worker]:
        """Every configured worker (for metrics: `.pool`, `.url`, `.state`, `.in_flight`, `.load`)."""
        return iter(list(self._workers.values()))

    def policy(self, pool: str) -> Policy:
        return self._pools[pool].policy

    @property
    def health(self) -> HealthMonitor:
        return self._monitor
