"""The fair gate in front of each pool: a request takes a slot before it is sent, or waits in a fair queue.

A pool's limit is the sum over its eligible workers of `max_running_requests + headroom` (capacity.py). What it
holds is this replica's own slots (taken here, given back when the relay ends) plus what the workers report beyond
them: the other replicas' requests, as of the last poll. While the pool has room and nobody waits, `try_take` hands
out a slot at once (no await, no allocation beyond the ticket). Otherwise the request waits in its tenant's bounded
queue and the scheduler (scheduler.py) decides who gets each slot that frees up.

`headroom` lets each worker queue a few requests beyond what it runs, so that a finished request's slot is refilled
by the worker itself instead of waiting for the gateway's next request; every request in a worker's own queue is
one that a newly arrived light tenant cannot overtake, so it stays small (default 0: the benchmark decides).

Grants out of the queue are paced, GCRA style: `PACING_BURST` at once, then one per `pacing x mean hold time /
limit` (the mean time for one slot to free up, scaled below 1). Requests that started together in one batch end
together (same length, same decode steps), and a gate that refilled every freed slot at that instant would start the
next batch together again: the pool's slots would free up in bursts, a whole request length apart, and a newcomer
would wait for the next burst instead of the next slot (measured: ~0.6 s instead of ~0.1 s in bench/fairness.py).
Spacing the grants spreads such a burst once; after that, slots free up evenly and the pacing does not bind. Slots
that free up at random times pass almost unhindered (a burst of two passes at once, and the rate allowed is above
the rate at which slots free up).

Across replicas, each replica sees the others' load only through the polls, and it refills the slots its own requests
free at once, so a saturated pool's slots would stay with the replicas that hold them: a tenant whose requests reach
only a replica holding no slots would wait until another replica's queue ran dry. Hence the one exception to "no
room, no grant": when the pool is exactly full, a tenant that holds no slot on this replica may send one request on
into the worker's own queue (empty otherwise, as every replica keeps its backlog at home). The worker gives it the
next slot it frees; the replica whose request ended sees the pool full (at its next poll at the latest) and does not
refill. The same holds for a tenant below its weighted share of the slots this replica holds, so that a light
tenant gets the pool's next free slot, not only this replica's. The worker's queue so holds at most one such request
per replica beyond `headroom`, plus what two replicas granted on the same stale poll. docs/benchmarks.md ("Fair
share") states the bound and measures it.

A pool whose limit is unknown (a worker's maximum could not be read) or that has no eligible worker is not held
back: the request goes on, and the router answers as it would without the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

from sparsegate.gateway.errors import QueueFull, QueueTimeout
from sparsegate.gateway.overload import FairDeadline, LoopMonitor
from sparsegate.gateway.queueing.capacity import CapacityReader, WorkerLoad
from sparsegate.gateway.queueing.metrics import QueueMetrics
from sparsegate.gateway.queueing.scheduler import FairScheduler, QueueFullError, Waiter
from sparsegate.gateway.routing import Worker
from sparsegate.gateway.settings import FairShareSettings

log = logging.getLogger(__name__)

Clock = Callable[[], float]

HOLD_WEIGHT = 0.1  # of each released slot in the moving average of hold times
PACING_BURST = 2  # grants out of the queue that may go at the same instant


@dataclass(slots=True)
class Ticket:
    """A slot in a pool, held from `try_take` / `wait` until `FairGate.release`."""

    pool: str
    tenant: str
    granted_at: float
    queued_s: float = 0.0
    held: bool = True  # False when the gate is off: releasing it does nothing


@dataclass
class PoolGate:
    """One pool's queue and its capacity as last seen."""

    name: str
    scheduler: FairScheduler
    limit: int | None = None  # slots the pool offers (max running + headroom, eligible workers); None: unknown
    others: int = 0  # requests on the pool's workers that are not this replica's, at the last poll
    futures: dict[Waiter, asyncio.Future[None]] = field(default_factory=dict)
    hold_s: float | None = None  # moving average of how long a slot is held
    paced_until: float = float("-inf")  # GCRA's theoretical arrival time of the next grant out of the queue
    paced: asyncio.TimerHandle | None = None  # the dispatch a pacing delay put off

    def spacing_s(self, pacing: float) -> float:
        """The least time between two grants out of the queue (see the module docstring)."""
        if not pacing or self.hold_s is None or not self.limit:
            return 0.0
        return pacing * self.hold_s / self.limit

    def in_use(self) -> int:
        return self.scheduler.held_total + self.others

    def free(self) -> int | None:
        """Slots free now; None when the limit is unknown (the pool is not held back)."""
        return None if self.limit is None else self.limit - self.in_use()


class FairGate:
    """Fair queuing per pool for one gateway process. See the module docstring."""

    def __init__(
        self,
        settings: FairShareSettings,
        workers: Callable[[], Iterable[Worker]],
        http: httpx.AsyncClient,
        monitor: LoopMonitor,
        *,
        metrics: QueueMetrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._workers = workers
        self._reader = CapacityReader(http, settings.poll_timeout_s)
        self._monitor = monitor
        self._metrics = metrics
        self._clock = clock
        self._pools: dict[str, PoolGate] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll_loop(), name="fair-gate polls")

    async def close(self) -> None:
        task, self._task = self._task, None
        for pool in self._pools.values():
            if pool.paced is not None:
                pool.paced.cancel()
                pool.paced = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def reload(self, settings: FairShareSettings) -> None:
        self.settings = settings
        for pool in self._pools.values():
            pool.scheduler.max_queued_per_tenant = settings.max_queued_per_tenant
            self._dispatch(pool)

    # -- taking and giving back slots -------------------------------------------------------------------------

    def pool(self, name: str) -> PoolGate:
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = PoolGate(name, FairScheduler(self.settings.max_queued_per_tenant))
        return pool

    def try_take(self, pool_name: str, tenant: str) -> Ticket | None:
        """A slot at once when the pool has room and nobody waits (or the gate is off); None means `wait`."""
        if not self.settings.enabled:
            return Ticket(pool_name, tenant, 0.0, held=False)
        pool = self.pool(pool_name)
        free = pool.free()
        if pool.scheduler.queued == 0 and (free is None or free > 0):
            pool.scheduler.take(tenant)
            return Ticket(pool_name, tenant, self._clock())
        return None

    async def wait(self, pool_name: str, tenant: str, *, tier: int, weight: float, budget_s: float) -> Ticket:
        """Wait in the tenant's queue for a slot, at most `budget_s` of fair time.

        Raises `QueueFull` (429) when the tenant's queue is at its bound and `QueueTimeout` (503 with retry-after)
        when the budget runs out; a cancel (the client left) leaves the queue at once and holds nothing.
        """
        pool = self.pool(pool_name)
        started = self._clock()
        waiter = Waiter(tenant, tier, weight, started)
        try:
            pool.scheduler.enqueue(waiter)
        except QueueFullError:
            if self._metrics is not None:
                self._metrics.shed(pool_name, tenant, "full")
            raise QueueFull(
                f"Too many of your requests are waiting for a slot in pool '{pool_name}' "
                f"(limit {self.settings.max_queued_per_tenant}); please retry shortly.",
                retry_after_s=1.0,
            ) from None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pool.futures[waiter] = future
        if self._metrics is not None:
            self._metrics.enter(pool_name, tenant)
        outcome = "granted"
        try:
            self._dispatch(pool)
            try:
                async with FairDeadline(self._monitor, budget_s):
                    await future
            except TimeoutError:
                if not _granted(future):
                    outcome = "timeout"
                    raise QueueTimeout(
                        f"The pool '{pool_name}' stayed busy for the whole wait this request allows "
                        f"({budget_s:.1f} s); please retry shortly.",
                        retry_after_s=1.0,
                    ) from None
            except asyncio.CancelledError:
                outcome = "cancelled"
                if _granted(future):
                    self._give_back(pool, tenant)
                raise
        finally:
            pool.scheduler.remove(waiter)
            pool.futures.pop(waiter, None)
            waited = self._clock() - started
            if self._metrics is not None:
                self._metrics.leave(pool_name, tenant, waited, outcome)
        return Ticket(pool_name, tenant, started + waited, queued_s=waited)

    def release(self, ticket: Ticket) -> None:
        """Give the slot back (exactly once; later calls do nothing) and hand it to the next waiter."""
        if not ticket.held:
            return
        ticket.held = False
        pool = self._pools.get(ticket.pool)
        if pool is not None:
            held = self._clock() - ticket.granted_at
            pool.hold_s = held if pool.hold_s is None else pool.hold_s + HOLD_WEIGHT * (held - pool.hold_s)
            self._give_back(pool, ticket.tenant)

    def _give_back(self, pool: PoolGate, tenant: str) -> None:
        pool.scheduler.release(tenant)
        self._dispatch(pool)

    def _dispatch(self, pool: PoolGate) -> None:
        scheduler = pool.scheduler
        while scheduler.queued:
            free = pool.free()
            waiter = scheduler.next_waiter()
            assert waiter is not None
            # A full pool still lets one request in for a tenant below its share here: it waits in the worker's
            # own queue (empty otherwise) and takes the next slot the worker frees, which this replica then does
            # not refill (the request counts as in use). See "Across replicas" in the module docstring.
            if free is not None and not (free > 0 or (free == 0 and scheduler.below_share(waiter.tenant))):
                return
            now = self._clock()
            spacing = pool.spacing_s(self.settings.pacing)
            wait = pool.paced_until - now - (PACING_BURST - 1) * spacing
            if wait > 0:
                if pool.paced is None:
                    pool.paced = asyncio.get_running_loop().call_later(wait, self._paced_dispatch, pool)
                return
            future = pool.futures.get(waiter)
            if future is None or future.done():  # its task was cancelled and has not run its cleanup yet
                scheduler.remove(waiter)
                continue
            scheduler.grant(waiter)
            pool.paced_until = max(pool.paced_until, now) + spacing
            future.set_result(None)

    def _paced_dispatch(self, pool: PoolGate) -> None:
        pool.paced = None
        self._dispatch(pool)

    # -- capacity ----------------------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Read every pool's workers once and hand out whatever room appeared."""
        members: dict[str, list[Worker]] = {}
        for worker in self._workers():
            members.setdefault(worker.pool, []).append(worker)
        await asyncio.gather(*(self._poll_pool(name, workers) for name, workers in members.items()))

    async def _poll_pool(self, name: str, workers: list[Worker]) -> None:
        pool = self.pool(name)
        eligible = [w for w in workers if w.eligible]
        own_before = pool.scheduler.held_total
        loads = await asyncio.gather(*(self._reader.read(w.url) for w in eligible))
        self.apply(pool, loads, own_before)

    def apply(self, pool: PoolGate, loads: list[WorkerLoad | None], own_before: int) -> None:
        """Take one poll's figures: the limit and the others' share. Our own requests may have started or ended
        while the poll was out; the larger of our counts before and after is subtracted, so the others' share is
        never overstated (at worst a worker briefly queues one request more than `headroom`)."""
        if not loads or any(load is None or load.max_running is None for load in loads):
            pool.limit, pool.others = None, 0
        else:
            known = [load for load in loads if load is not None and load.max_running is not None]
            pool.limit = sum(load.max_running or 0 for load in known) + self.settings.headroom * len(known)
            held = sum(load.held for load in known)
            pool.others = max(0, held - max(own_before, pool.scheduler.held_total))
        self._dispatch(pool)

    async def _poll_loop(self) -> None:
        while True:
            if self.settings.enabled:
                try:
                    await self.poll()
                except Exception:  # a bug here must not stop the polls for good
                    log.exception("capacity poll failed")
            await asyncio.sleep(self.settings.poll_s)

    # -- status ------------------------------------------------------------------------------------------------

    def saturation(self) -> dict[str, dict[str, int | bool | None]]:
        """Per pool: its slot limit (None: unknown), slots in use, requests waiting, and whether it is full."""
        out: dict[str, dict[str, int | bool | None]] = {}
        for name, pool in sorted(self._pools.items()):
            free = pool.free()
            out[name] = {
                "limit": pool.limit,
                "in_use": pool.in_use(),
                "queued": pool.scheduler.queued,
                "saturated": free is not None and free <= 0,
            }
        return out


def _granted(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled()
