"""Observability: Prometheus metrics, OpenTelemetry traces (the request log lives in requestlog.py)."""

from __future__ import annotations

from sparsegate.gateway.observability.metrics import GatewayMetrics
from sparsegate.gateway.observability.tracing import Tracing, provider_from_settings

__all__ = ["GatewayMetrics", "Tracing", "provider_from_settings"]
