"""Prefix affinity: consistent hashing of the prompt's prefix, bounded by load.

Requests that share a prefix land on the same worker, where SGLang's radix cache already holds that prefix's
KV. Each member gets `vnodes` points on a 64-bit hash ring; a key goes to the first eligible worker clockwise
from its hash, so a worker leaving or coming back moves only its own keys.

Affinity alone piles a hot prefix onto one worker until it falls over (the "death spiral" of cache-aware
routing). So the ring's choice is taken only while its load stays within a bound on the pool's mean, in the
spirit of "consistent hashing with bounded loads" (Mirrokni, Thorup, Zadimoghaddam 2018):

    load(choice) + 1 <= (1 + epsilon) * (sum of loads + 1) / n + slack

and otherwise the request falls through to power-of-two choices. `slack` keeps a lightly loaded pool from
spreading a prefix after its first couple of requests, when the mean is still near zero.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

from ..workers import Worker
from .base import Outcome
from .power_of_two import PowerOfTwo


def ring_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class PrefixAffinity:
    name = "prefix_affinity"

    def __init__(
        self,
        members: Sequence[Worker] = (),
        *,
        vnodes: int = 160,
        epsilon: float = 0.5,
        slack: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.slack = slack
        self._fallback = PowerOfTwo(rng=rng)
        points = sorted((ring_hash(f"{w.url}#{v}"), i) for i, w in enumerate(members) for v in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._ring = [members[i] for _, i in points]
        self.spills = 0  # requests the load bound sent elsewhere; for tests and metrics

    def ring_choice(self, workers: Sequence[Worker], key: str) -> Worker | None:
        """The first of `workers` clockwise from the key's hash on the members' ring, ignoring load."""
        size = len(self._ring)
        if size == 0:
            return None
        start = bisect.bisect_right(self._hashes, ring_hash(key))
        for step in range(size):
            w = self._ring[(start + step) % size]
            if w in workers:  # Worker has no __eq__: an identity scan in C, cheaper than building a set
                return w
        return None

    def select(self, workers: Sequence[Worker], key: str) -> Worker:
        n = len(workers)
        if n == 1:
            return workers[0]
        choice = self.ring_choice(workers, key)
        if choice is not None:
            need = choice.load + 1
            # Cheap accept first: the bound can't be below this however the rest are loaded.
            if need <= (1.0 + self.epsilon) * need / n + self.slack:
                return choice
            total = sum([w.in_flight + w.extra_load for w in workers])  # = sum of Worker.load, inlined
            if need <= (1.0 + self.epsilon) * (total + 1) / n + self.slack:
                return choice
            self.spills += 1
        return self._fallback.select(workers, key)

    def observe(self, worker: Worker, outcome: Outcome, latency_s: float | None = None) -> None:
        return None
