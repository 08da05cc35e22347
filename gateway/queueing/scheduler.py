"""Who gets a pool's next free slot: priority tiers first, then the waiting tenant with the smallest weighted share.

A pure data structure (no clock, no tasks), one per pool: bounded FIFO queues per tenant, and the slots each tenant
holds right now. `next_waiter` picks among the queues' heads:

1. the highest priority tier (a tenant's `priority`; larger goes first, as SGLang orders it by default);
2. within the tier, the tenant whose share *after* one more slot, `(held + 1) / weight`, is smallest;
3. on a tie, the request that has waited longest.

The unit of fairness is a slot held, for as long as it is held: a tenant whose requests run longer holds its slots
longer and so gets fewer new ones. Nothing is remembered beyond the slots held now, so a tenant that was idle gets
no credit to burst with later, and a lone tenant gets every free slot (the pool stays work-conserving).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting for a slot in a pool."""

    tenant: str
    tier: int
    weight: float
    enqueued_at: float
    seq: int = 0  # arrival order, set by `FairScheduler.enqueue`
    queued: bool = field(default=False)


class QueueFullError(Exception):
    """The tenant already has `max_queued` requests waiting in this pool."""


class FairScheduler:
    """The waiting requests and the slots held, per tenant, in one pool."""

    def __init__(self, max_queued_per_tenant: int) -> None:
        self.max_queued_per_tenant = max_queued_per_tenant
        self._queues: dict[str, deque[Waiter]] = {}
        self._held: dict[str, int] = {}
        self._weights: dict[str, float] = {}  # each tenant's weight, as its latest waiter gave it
        self._seq = itertools.count()
        self.queued = 0

    def held(self, tenant: str) -> int:
        """Slots `tenant` holds in this pool."""
        return self._held.get(tenant, 0)

    @property
    def held_total(self) -> int:
        return sum(self._held.values())

    def depth(self, tenant: str) -> int:
        """Requests of `tenant` waiting."""
        queue = self._queues.get(tenant)
        return len(queue) if queue is not None else 0

    def tenants(self) -> list[str]:
        """Tenants with requests waiting or slots held."""
        return sorted(set(self._queues) | {t for t, n in self._held.items() if n})

    def enqueue(self, waiter: Waiter) -> None:
        """Append `waiter` to its tenant's queue; `QueueFullError` when that queue is at its bound."""
        queue = self._queues.setdefault(waiter.tenant, deque())
        if len(queue) >= self.max_queued_per_tenant:
            if not queue:
                del self._queues[waiter.tenant]
            raise QueueFullError(waiter.tenant)
        waiter.seq = next(self._seq)
        waiter.queued = True
        self._weights[waiter.tenant] = waiter.weight
        queue.append(waiter)
        self.queued += 1

    def remove(self, waiter: Waiter) -> None:
        """Take a waiter out that gives up (deadline, disconnect); a waiter no longer queued is left alone."""
        if not waiter.queued:
            return
        queue = self._queues[waiter.tenant]
        queue.remove(waiter)
        waiter.queued = False
        self.queued -= 1
        if not queue:
            del self._queues[waiter.tenant]

    def next_waiter(self) -> Waiter | None:
        """The waiter that should get the next free slot (see the module docstring), left in place."""
        best: Waiter | None = None
        best_key: tuple[int, float, int] | None = None
        for tenant, queue in self._queues.items():
            head = queue[0]
            key = (-head.tier, (self._held.get(tenant, 0) + 1) / head.weight, head.seq)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return best

    def below_share(self, tenant: str) -> bool:
        """Whether `tenant` holds fewer slots than its weighted share of those held here, among the tenants that
        hold or wait for slots (a lone tenant never is)."""
        active = set(self._queues) | {t for t, n in self._held.items() if n}
        total_weight = sum(self._weights.get(t, 1.0) for t in active)
        if not total_weight:
            return False
        share = self.held_total * self._weights.get(tenant, 1.0) / total_weight
        return self._held.get(tenant, 0) < share or self._held.get(tenant, 0) == 0

    def grant(self, waiter: Waiter) -> None:
        """Give `waiter` a slot: out of its queue, one more slot held by its tenant."""
        self.remove(waiter)
        self.take(waiter.tenant)

    def take(self, tenant: str) -> None:
        """A slot taken without waiting (the pool had room and nobody was queued)."""
        self._held[tenant] = self._held.get(tenant, 0) + 1

    def release(self, tenant: str) -> None:
        """A slot given back."""
        left = self._held.get(tenant, 0) - 1
        if left > 0:
            self._held[tenant] = left
        else:
            self._held.pop(tenant, None)
            if tenant not in self._queues:
                self._weights.pop(tenant, None)
