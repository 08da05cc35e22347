"""No client-facing message names an internal host: worker URLs stay in the logs."""

from __future__ import annotations

import pytest

from sparsegate.backends.sim import FaultSettings
from sparsegate.gateway.dialects import AnthropicDialect, ResponsesDialect
from sparsegate.gateway.errors import UpstreamUnavailable, client_message, error_event
from tests.gateway.admin.support import ACME_KEY, MODEL, WORKER, bearer, running, settings


@pytest.mark.parametrize(
    ("internal", "public"),
    [
        ("Could not connect to worker http://10.0.0.5:30000.", "Could not connect to worker."),
        ("Worker http://sim-1:30000 is unavailable: queue full", "Worker is unavailable: queue full"),
        ("The stream from worker https://w.internal/ ended early.", "The stream from worker ended early."),
        ("Worker http://w:1 failed (500): see redis://cache:6379/0 now", "Worker failed (500): see now"),
        ("Rate limit reached for tenant 'acme'.", "Rate limit reached for tenant 'acme'."),
    ],
)
def test_internal_urls_are_cut_from_client_messages(internal: str, public: str) -> None:
    assert client_message(internal) == public


def test_the_envelope_and_the_stream_error_event_use_the_client_message() -> None:
    err = UpstreamUnavailable("Worker http://10.1.2.3:30000 failed (500): boom")
    assert err.envelope()["error"]["message"] == "Worker failed (500): boom"
    assert b"10.1.2.3" not in error_event(err)
    assert "10.1.2.3" in err.message  # kept for the operator's log


async def test_a_failing_worker_is_not_named_to_the_client() -> None:
    faults = FaultSettings(error_rate=1.0, error_status=500)
    async with running(settings(retries={"max_attempts": 1}), faults=faults) as (_, client):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        response = await client.post("/v1/chat/completions", json=body, headers=bearer(ACME_KEY))
        assert response.status_code == 502
        host = WORKER.split("//")[1].split(":")[0]
        assert host not in response.text and WORKER not in response.text
        assert response.json()["error"]["type"] == "server_error"


def test_the_other_dialects_envelopes_leave_hosts_out_too() -> None:
    err = UpstreamUnavailable("Could not connect to worker http://10.9.8.7:30000.")
    assert "10.9.8.7" not in str(AnthropicDialect().envelope(err))
    assert b"10.9.8.7" not in AnthropicDialect().error_event(err)
    assert b"10.9.8.7" not in ResponsesDialect().error_event(err)
