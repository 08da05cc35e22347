"""Routing: token counting, pool choice by tenant and context length, balancing policies, worker health."""

from __future__ import annotations

from ..breaker import BreakerState, CircuitBreaker
from .policies import Outcome, Policy
from .pools import ModelInfo, RoutePlan
from .router import Router
from .workers import Worker

__all__ = ["BreakerState", "CircuitBreaker", "ModelInfo", "Outcome", "Policy", "RoutePlan", "Router", "Worker"]
