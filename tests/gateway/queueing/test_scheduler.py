"""The fair scheduler on its own: tiers, weighted shares of slots, FIFO within a tenant, bounds, and a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sparsegate.gateway.queueing import FairScheduler, QueueFullError, Waiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def waiter(tenant: str, clock: FakeClock, *, tier: int = 0, weight: float = 1.0) -> Waiter:
    clock.now += 0.001
    return Waiter(tenant, tier, weight, clock())


def grant_next(s: FairScheduler) -> Waiter:
    w = s.next_waiter()
    assert w is not None
    s.grant(w)
    return w


def test_a_lone_tenant_gets_every_slot() -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=100)
    queued = [waiter("a", clock) for _ in range(20)]
    for w in queued:
        s.enqueue(w)
    granted = [grant_next(s) for _ in range(20)]
    assert granted == queued, "one tenant is served in arrival order, all of it"
    assert s.held("a") == 20 and s.queued == 0 and s.next_waiter() is None


def test_a_light_tenant_overtakes_a_heavy_tenants_backlog() -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=100)
    for _ in range(8):
        s.take("a")  # a holds every slot
    for _ in range(56):
        s.enqueue(waiter("a", clock))
    light = waiter("b", clock)
    s.enqueue(light)  # arrives last, behind 56 of a's
    s.release("a")
    assert grant_next(s) is light
    s.release("a")
    assert grant_next(s).tenant == "a", "b holds one slot now and has nothing waiting"


@pytest.mark.parametrize(("wa", "wb", "slots"), [(1.0, 1.0, 8), (3.0, 1.0, 8), (1.0, 3.0, 12), (2.0, 1.0, 9)])
def test_weights_split_contended_slots_in_proportion(wa: float, wb: float, slots: int) -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=10_000)
    rng = random.Random(7)
    for _ in range(2_000):
        s.enqueue(waiter("a", clock, weight=wa))
        s.enqueue(waiter("b", clock, weight=wb))
    for _ in range(slots):
        grant_next(s)
    # steady state: a random running request ends, its slot goes out again; sample who holds what
    held: Counter[str] = Counter()
    for _ in range(1_000):
        running = [t for t in ("a", "b") for _ in range(s.held(t))]
        s.release(rng.choice(running))
        grant_next(s)
        held["a"] += s.held("a")
        held["b"] += s.held("b")
    share_a = held["a"] / (held["a"] + held["b"])
    assert share_a == pytest.approx(wa / (wa + wb), abs=1.0 / slots)


def test_a_higher_tier_goes_first_whatever_its_share() -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=100)
    for _ in range(6):
        s.take("vip")
    s.enqueue(waiter("bulk", clock, tier=0))
    vip = waiter("vip", clock, tier=5)
    s.enqueue(vip)
    assert grant_next(s) is vip
    assert grant_next(s).tenant == "bulk", "a lower tier still gets what the higher one leaves"


def test_equal_shares_go_to_the_longest_waiting() -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=100)
    first, second = waiter("b", clock), waiter("a", clock)
    s.enqueue(first)
    s.enqueue(second)
    assert grant_next(s) is first
    assert grant_next(s) is second


def test_each_tenants_queue_is_bounded() -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=2)
    s.enqueue(waiter("a", clock))
    s.enqueue(waiter("a", clock))
    with pytest.raises(QueueFullError):
        s.enqueue(waiter("a", clock))
    s.enqueue(waiter("b", clock))  # another tenant's queue is its own
    assert s.queued == 3 and s.depth("a") == 2 and s.depth("b") == 1


def test_a_waiter_that_gives_up_leaves_and_holds_nothing() -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=10)
    gone, stays = waiter("a", clock), waiter("a", clock)
    s.enqueue(gone)
    s.enqueue(stays)
    s.remove(gone)
    s.remove(gone)  # twice is harmless
    assert s.queued == 1 and s.held("a") == 0
    assert grant_next(s) is stays
    s.remove(stays)  # already granted: nothing to take out
    assert s.held("a") == 1 and s.tenants() == ["a"]
    s.release("a")
    assert s.tenants() == [] and s.held_total == 0


def test_below_share_is_weighted_and_never_true_for_a_lone_tenant() -> None:
    clock, s = FakeClock(), FairScheduler(max_queued_per_tenant=100)
    for _ in range(6):
        s.take("a")
    s.enqueue(waiter("a", clock))
    assert not s.below_share("a"), "a lone tenant holds its whole share"
    s.enqueue(waiter("b", clock, weight=1.0))
    assert s.below_share("b")
    for _ in range(5):
        s.take("b")
    assert s.below_share("b"), "5 of 11 held, against an equal share of 5.5"
    s.take("b")
    assert not s.below_share("b") and not s.below_share("a"), "6 and 6 of 12"
    s.enqueue(waiter("c", clock, weight=2.0))
    assert s.below_share("c") and not s.below_share("a"), "weights 1, 1, 2: c's share is 6 of 12, a's 3"
