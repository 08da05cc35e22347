"""Traces, metrics and request logs after real requests: the span tree, GenAI attributes, labels, and totals."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sparsegate.gateway.app import create_app
from sparsegate.gateway.settings import hash_api_key, load_settings
from tests.e2e.harness import ADMIN_KEY, KEY_ACME, MODEL, Sim, ThreadedGateway, stream_then_leave, tenant, wait_until

HELLO = [{"role": "user", "content": "Tell me about sparse attention"}]
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def traced(sims: Callable[..., Sim]) -> Iterator[tuple[ThreadedGateway, Sim, InMemorySpanExporter]]:
    sim = sims(max_context=32_768)
    settings = load_settings(
        overrides={
            "tenants": [tenant("acme", KEY_ACME, limits={"rpm": 1000, "tpm": 1_000_000})],
            "pools": [{"name": "short", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
            "admin": {"api_keys": [hash_api_key(ADMIN_KEY)]},
        }
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ThreadedGateway(create_app(settings, tracer_provider=provider)) as gw:
        yield gw, sim, exporter


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_span_tree_of_a_streamed_request(traced: tuple[ThreadedGateway, Sim, InMemorySpanExporter]) -> None:
    gw, sim, exporter = traced
    parent = f"00-{INCOMING_TRACE}-00f067aa0ba902b7-01"
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_ACME, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=6, stream=True, extra_headers={"traceparent": parent}
        )
        chunks = list(stream)
    assert wait_until(lambda: "chat" in _by_name(exporter.get_finished_spans()), timeout=5)
    spans = _by_name(exporter.get_finished_spans())
    root = spans["chat"]
    assert root.kind is SpanKind.SERVER
    assert root.context is not None and root.parent is not None
    assert format(root.context.trace_id, "032x") == INCOMING_TRACE, "the caller's trace is continued"
    for child in ("auth", "routing", "admission", "upstream"):
        assert spans[child].parent is not None and spans[child].parent.span_id == root.context.span_id, child
    assert spans["upstream"].kind is SpanKind.CLIENT
    attrs = dict(root.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.usage.output_tokens"] == 6
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("length",)
    assert attrs["gen_ai.response.id"] == chunks[0].id
    assert attrs["sparsegate.tenant"] == "acme" and attrs["sparsegate.pool"] == "short"
    assert attrs["sparsegate.worker"] == sim.url
    # The worker got the upstream span's context, so its own spans join the same trace.
    upstream = spans["upstream"]
    assert upstream.context is not None
    seen = sim.stats()["recent"][-1]["headers_seen"]["traceparent"]
    assert seen == f"00-{INCOMING_TRACE}-{format(upstream.context.span_id, '016x')}-01"
    # Nothing secret in any attribute of any span.
    for span in exporter.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert KEY_ACME not in str(value) and "sparse attention" not in str(value)


def test_failed_request_span_has_error_status(traced: tuple[ThreadedGateway, Sim, InMemorySpanExporter]) -> None:
    gw, _, exporter = traced
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_ACME, max_retries=0)
    with client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
    assert wait_until(lambda: "chat" in _by_name(exporter.get_finished_spans()), timeout=5)
    root = _by_name(exporter.get_finished_spans())["chat"]
    assert not root.status.is_ok and dict(root.attributes or {})["error.type"] == "ModelNotFound"


def _samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for key, value in _samples(text, name).items():
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def test_metrics_after_stream_and_non_stream(traced: tuple[ThreadedGateway, Sim, InMemorySpanExporter]) -> None:
    gw, sim, _ = traced
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_ACME, max_retries=0) as client:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
        list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, stream=True))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-nope-000000000000", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100_000)
    # one request cancelled by its client
    body: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 5000, "ignore_eos": True, "stream": True}
    stream_then_leave(gw, body, events=1)
    # one request that fails mid-stream
    sim.faults(drop_after_tokens=2)
    httpx.post(
        gw.url + "/v1/chat/completions",
        json={**body, "max_tokens": 10},
        headers={"Authorization": f"Bearer {KEY_ACME}"},
    )
    sim.faults(drop_after_tokens=None)
    assert wait_until(lambda: sim.stats()["aborted"] == 1, timeout=5)

    def scrape() -> str:
        return httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text

    assert wait_until(lambda: _total(scrape(), "sparsegate_requests_in_flight") == 0, timeout=5)
    text = scrape()
    labels = {"tenant": "acme", "model": MODEL, "pool": "short"}
    # status is what the client got: the cut and the cancelled streams had already sent their 200
    assert _total(text, "sparsegate_requests_total", **labels, endpoint="chat", status="200") == 4
    assert _total(text, "sparsegate_requests_total", tenant="acme", status="400") == 1
    assert _total(text, "sparsegate_requests_total", status="401") == 0  # /v1/models is not a generation
    assert _total(text, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 1  # the clean stream only
    assert _total(text, "gen_ai_server_time_per_output_token_seconds_count", model=MODEL, pool="short") > 0
    assert _total(text, "gen_ai_server_request_duration_seconds_count", **labels, endpoint="chat") == 4
    assert _total(text, "gen_ai_client_token_usage_total", tenant="acme", gen_ai_token_type="output") >= 10
    assert _total(text, "gen_ai_client_token_usage_total", tenant="acme", gen_ai_token_type="input") > 0
    assert _total(text, "sparsegate_gateway_overhead_seconds_count", endpoint="chat") == 4
    assert _total(text, "sparsegate_upstream_errors_total", pool="short") == 0  # a cut stream is not an attempt error
    assert _total(text, "sparsegate_worker_breaker_state", pool="short", worker=sim.url) == 0
    # Counts add up: admitted = finished + failed + cancelled.
    admitted = _total(text, "sparsegate_limiter_decisions_total", tenant="acme", decision="admitted")
    ok = _total(text, "sparsegate_request_outcomes_total", tenant="acme", outcome="ok")
    failed = _total(text, "sparsegate_request_outcomes_total", tenant="acme", outcome="error")
    cancelled = _total(text, "sparsegate_request_outcomes_total", tenant="acme", outcome="cancelled")
    assert (admitted, ok, failed, cancelled) == (4, 2, 1, 1)
    # Bounded labels: no request ids, keys or prompts anywhere.
    assert not re.search(r"chatcmpl-|req-|sk-|sparse attention", text)
