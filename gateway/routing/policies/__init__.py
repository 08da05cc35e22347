"""Balancing policies inside a pool, one per module, behind the `Policy` interface of `base`."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..workers import Worker
from .base import Outcome, Policy
from .least_outstanding import LeastOutstanding
from .power_of_two import PowerOfTwo
from .prefix_affinity import PrefixAffinity

__all__ = ["LeastOutstanding", "Outcome", "Policy", "PowerOfTwo", "PrefixAffinity", "make_policy"]


def make_policy(name: str, members: Sequence[Worker], rng: random.Random | None = None) -> Policy:
    """The policy a pool's config names (`PoolConfig.policy`), built over the pool's members."""
    if name == "least_outstanding":
        return LeastOutstanding(members)
    if name == "power_of_two":
        return PowerOfTwo(members, rng=rng)
    if name == "prefix_affinity":
        return PrefixAffinity(members, rng=rng)
    raise ValueError(f"unknown routing policy {name!r}")
