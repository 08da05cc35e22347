from __future__ import annotations

import random

from sparsegate.gateway.breaker import CircuitBreaker
from sparsegate.gateway.routing.policies.power_of_two import PowerOfTwo
from sparsegate.gateway.routing.workers import Worker


def workers(n: int) -> list[Worker]:
    return [Worker(f"http://w{i}:1", "p", CircuitBreaker(3, 10.0)) for i in range(n)]


def test_single_worker() -> None:
    ws = workers(1)
    assert PowerOfTwo(ws).select(ws, "k") is ws[0]


def test_two_workers_always_the_less_loaded() -> None:
    ws = workers(2)
    ws[0].set_polled_load(7, at=0.0)
    ws[1].set_polled_load(3, at=0.0)
    policy = PowerOfTwo(ws, rng=random.Random(0))
    assert all(policy.select(ws, "k") is ws[1] for _ in range(50))


def test_the_most_loaded_worker_is_never_chosen() -> None:
    ws = workers(6)
    for i, w in enumerate(ws):
        w.set_polled_load(i, at=0.0)
    policy = PowerOfTwo(ws, rng=random.Random(1))
    picks = [policy.select(ws, "k") for _ in range(500)]
    assert ws[-1] not in picks
    # The least loaded wins every sample it is in: 2/6 of them.
    assert picks.count(ws[0]) > 500 * 0.25


def test_load_counts_polled_figure_plus_our_changes_since() -> None:
    w = workers(1)[0]
    w.in_flight = 2
    w.set_polled_load(10, at=0.0)  # includes our 2
    w.in_flight = 5  # we sent 3 more since the poll
    assert w.load == 13
    w.in_flight = 0
    assert w.load == 8
    w.set_polled_load(None, at=1.0)  # a failed poll: back to our own count
    assert w.load == 0


def test_balances_a_steady_stream() -> None:
    rng = random.Random(2)
    ws = workers(8)
    policy = PowerOfTwo(ws, rng=rng)
    live: list[Worker] = []
    for _ in range(4000):
        w = policy.select(ws, "k")
        w.in_flight += 1
        w.picks += 1
        live.append(w)
        if len(live) > 40:  # each request lives for 40 arrivals
            live.pop(rng.randrange(len(live))).in_flight -= 1
    mean = 4000 / 8
    assert max(w.picks for w in ws) <= mean * 1.1
