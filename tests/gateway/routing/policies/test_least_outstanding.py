from __future__ import annotations

from sparsegate.gateway.breaker import CircuitBreaker
from sparsegate.gateway.routing.policies.least_outstanding import LeastOutstanding
from sparsegate.gateway.routing.workers import Worker


def workers(n: int) -> list[Worker]:
    return [Worker(f"http://w{i}:1", "p", CircuitBreaker(3, 10.0)) for i in range(n)]


def test_picks_fewest_in_flight() -> None:
    ws = workers(4)
    for w, n in zip(ws, [3, 1, 0, 2], strict=True):
        w.in_flight = n
    policy = LeastOutstanding(ws)
    for _ in range(5):
        assert policy.select(ws, "k") is ws[2]


def test_ties_rotate_so_an_idle_pool_fills_evenly() -> None:
    ws = workers(4)
    policy = LeastOutstanding(ws)
    picked = [policy.select(ws, "k") for _ in range(8)]
    assert [picked.count(w) for w in ws] == [2, 2, 2, 2]


def test_filling_keeps_in_flight_within_one() -> None:
    ws = workers(5)
    policy = LeastOutstanding(ws)
    for _ in range(23):
        policy.select(ws, "k").in_flight += 1
    counts = [w.in_flight for w in ws]
    assert max(counts) - min(counts) <= 1


def test_ignores_polled_load_and_outcomes() -> None:
    ws = workers(2)
    ws[0].set_polled_load(100, at=0.0)
    policy = LeastOutstanding(ws)
    policy.observe(ws[0], "upstream_error", 1.0)
    assert {policy.select(ws, "k").url for _ in range(2)} == {ws[0].url, ws[1].url}
