from __future__ import annotations

import random

from sparsegate.gateway.breaker import CircuitBreaker
from sparsegate.gateway.routing.policies.prefix_affinity import PrefixAffinity
from sparsegate.gateway.routing.workers import Worker


def workers(n: int) -> list[Worker]:
    return [Worker(f"http://10.0.0.{i}:30000", "p", CircuitBreaker(3, 10.0)) for i in range(n)]


def test_same_key_same_worker_while_load_is_low() -> None:
    ws = workers(4)
    policy = PrefixAffinity(ws, rng=random.Random(0))
    first = policy.select(ws, "system-prompt-A")
    for _ in range(100):
        w = policy.select(ws, "system-prompt-A")
        assert w is first
        w.in_flight += 1
        w.in_flight -= 1  # served before the next one arrives
    assert policy.spills == 0


def test_distinct_keys_spread_over_the_ring() -> None:
    ws = workers(8)
    policy = PrefixAffinity(ws, rng=random.Random(0))
    for i in range(8000):
        policy.select(ws, f"conversation-{i}").picks += 1
    mean = 8000 / 8
    assert all(0.75 * mean <= w.picks <= 1.25 * mean for w in ws), [w.picks for w in ws]


def test_hot_prefix_spreads_once_its_worker_reaches_the_bound() -> None:
    ws = workers(4)
    policy = PrefixAffinity(ws, epsilon=0.5, slack=2.0, rng=random.Random(0))
    home = policy.ring_choice(ws, "hot")
    assert home is not None
    for _ in range(200):  # nothing finishes: load only grows
        w = policy.select(ws, "hot")
        w.in_flight += 1
        total = sum(x.in_flight for x in ws)
        assert home.in_flight <= 1.5 * total / 4 + 2 + 1
    assert home.in_flight > 200 / 4  # it kept more than its share: affinity still pays
    assert policy.spills > 0
    others = [w.in_flight for w in ws if w is not home]
    assert min(others) > 0  # and the rest took the overflow
    mean = 200 / 4
    assert max(w.in_flight for w in ws) <= 1.5 * mean + 3


def test_polled_load_counts_toward_the_bound() -> None:
    ws = workers(3)
    policy = PrefixAffinity(ws, rng=random.Random(0))
    home = policy.ring_choice(ws, "k")
    assert home is not None
    home.set_polled_load(50, at=0.0)  # busy with other replicas' traffic
    picks = [policy.select(ws, "k") for _ in range(20)]
    assert home not in picks


def test_a_worker_leaving_moves_only_its_own_keys() -> None:
    ws = workers(5)
    policy = PrefixAffinity(ws, rng=random.Random(0))
    keys = [f"k{i}" for i in range(2000)]
    before = {k: policy.ring_choice(ws, k) for k in keys}
    gone = ws[2]
    rest = [w for w in ws if w is not gone]
    after = {k: policy.ring_choice(rest, k) for k in keys}
    for k in keys:
        if before[k] is not gone:
            assert after[k] is before[k]
        else:
            assert after[k] is not gone


def test_single_candidate_and_unknown_candidates() -> None:
    ws = workers(2)
    policy = PrefixAffinity(ws[:1], rng=random.Random(0))
    assert policy.select(ws[1:], "k") is ws[1]
    # Candidates not on the ring (not members when it was built) still get served, by the fallback.
    stranger = Worker("http://x:1", "p", CircuitBreaker(3, 10.0))
    assert policy.select([stranger, ws[1]], "k") in (stranger, ws[1])
