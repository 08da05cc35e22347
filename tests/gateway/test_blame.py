"""Whose fault is it: a worker's answer or failure → the client's status, and what its breaker hears."""

from __future__ import annotations

import pytest

from sparsegate.gateway.errors import (
    UpstreamBusy,
    UpstreamError,
    UpstreamNotReady,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sparsegate.gateway.relay.attempts import router_outcome
from sparsegate.gateway.upstream import status_error

BLAME = [
    # status, error class, client status, retried elsewhere, what the breaker hears
    (503, UpstreamNotReady, 503, True, "upstream_error"),
    (500, UpstreamUnavailable, 502, False, "upstream_error"),
    (429, UpstreamBusy, 429, True, "busy"),
    (504, UpstreamTimeout, 504, False, "timeout"),
]


@pytest.mark.parametrize(("status", "cls", "client_status", "retriable", "heard"), BLAME)
def test_status_blame_table(status: int, cls: type, client_status: int, retriable: bool, heard: str) -> None:
    exc = status_error("http://w", status, b'{"error": {"message": "m"}}', "2")
    assert isinstance(exc, cls) and isinstance(exc, UpstreamError)
    assert exc.status_code == client_status and exc.retriable is retriable
    assert router_outcome(exc) == heard


def test_worker_4xx_is_the_clients_fault() -> None:
    exc = status_error("http://w", 400, b'{"message": "bad stop"}')
    assert isinstance(exc, UpstreamRejected) and exc.status_code == 400 and exc.message == "bad stop"
    # SGLang answers 422 (or 404) for the same kind of mistake: clients see OpenAI's 400 either way
    for status in (404, 422):
        exc = status_error("http://w", status, b'{"object": "error", "message": "bad", "code": 422}')
        assert isinstance(exc, UpstreamRejected) and exc.status_code == 400 and exc.upstream_status == status


def test_a_workers_own_words_stay_in_the_logs() -> None:
    exc = status_error("http://w", 500, b'{"object": "error", "message": "gpu-node-3.internal OOM", "code": 500}')
    assert "gpu-node-3" not in str(exc.envelope()) and exc.detail == "gpu-node-3.internal OOM"


def test_busy_passes_the_workers_wait_and_is_neutral() -> None:
    exc = status_error("http://w", 429, b"", "2.5")
    assert isinstance(exc, UpstreamBusy) and not exc.blames_worker
    assert exc.headers() == {"retry-after-ms": "2500", "retry-after": "3"}


@pytest.mark.parametrize(("outcome", "heard"), [("refused", "connect_error"), ("reset", "upstream_error")])
def test_transport_outcomes(outcome: str, heard: str) -> None:
    exc = UpstreamUnavailable("x", outcome=outcome)  # type: ignore[arg-type]
    assert exc.blames_worker and router_outcome(exc) == heard
