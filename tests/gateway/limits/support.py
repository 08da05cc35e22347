"""Small builders shared by the limiter tests."""

from __future__ import annotations

import re
import uuid

from sparsegate.gateway.limits.base import AdmissionRequest
from sparsegate.gateway.settings import FailurePolicy, Limits

_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def admission(
    *,
    tenant: str = "acme",
    model: str = "glm-5",
    tokens: int = 1,
    on_failure: FailurePolicy = "fail_open",
    model_limits: Limits | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
) -> AdmissionRequest:
    return AdmissionRequest(
        tenant=tenant,
        model=model,
        limits=Limits(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent),
        model_limits=model_limits,
        tokens=tokens,
        request_id=uuid.uuid4().hex[:12],
        on_failure=on_failure,
    )


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration as OpenAI sends them ("1m0.5s", "20ms"); the whole string must parse."""
    parts = _GO_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Go duration: {text!r}"
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)
