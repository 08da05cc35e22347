"""OpenTelemetry traces: one server span per request, a child per layer and one client span per worker attempt.

Attributes follow the GenAI semantic conventions (`gen_ai.*`), plus the tenant's name (never its key) and the
pool and worker. The W3C `traceparent` goes to the worker. The exporter is OTLP/HTTP, on only when an endpoint is
configured (settings or `OTEL_EXPORTER_OTLP_ENDPOINT`); the SDK reads the other standard `OTEL_*` variables itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sparsegate.gateway.record import NoTrace, Observer, RequestRecord, TraceHandle
from sparsegate.gateway.settings import Settings

OPERATION = {"chat": "chat", "completions": "text_completion"}


def provider_from_settings(settings: Settings) -> TracerProvider | None:
    endpoint = settings.telemetry.otlp_endpoint or settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": settings.telemetry.service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class Tracing(Observer):
    """Starts request traces; an observer that closes them when the request is reported."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("sparsegate.gateway") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start(self, record: RequestRecord, headers: Mapping[str, str]) -> TraceHandle:
        if self._tracer is None:
            return NoTrace(headers.get("traceparent"))
        return _RequestTrace(self._tracer, record, headers)

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()

    def on_finish(self, record: RequestRecord) -> None:
        record.trace.finish(record)


class _RequestTrace:
    def __init__(self, tracer: trace.Tracer, record: RequestRecord, headers: Mapping[str, str]) -> None:
        self._tracer = tracer
        operation = OPERATION.get(record.endpoint, record.endpoint)
        self._root = tracer.start_span(
            operation,
            context=extract(dict(headers)),
            kind=SpanKind.SERVER,
            attributes={"gen_ai.operation.name": operation, "gen_ai.provider.name": "sglang"},
        )
        self._upstream: Span | None = None
        self._finished = False

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        ctx = trace.set_span_in_context(self._root)
        with self._tracer.start_as_current_span(name, context=ctx, record_exception=True):
            yield

    def stage(self, name: str) -> AbstractContextManager[None]:
        return self._stage(name)

    def upstream_start(self, worker: str, rid: str, headers: dict[str, str]) -> None:
        ctx = trace.set_span_in_context(self._root)
        self._upstream = self._tracer.start_span(
            "upstream", context=ctx, kind=SpanKind.CLIENT, attributes={"server.address": worker, "sparsegate.rid": rid}
        )
        inject(headers, context=trace.set_span_in_context(self._upstream))

    def upstream_end(self, error: str | None) -> None:
        if self._upstream is None:
            return
        if error is not None:
            self._upstream.set_status(Status(StatusCode.ERROR, error))
            self._upstream.set_attribute("error.type", error)
        self._upstream.end()
        self._upstream = None

    def finish(self, record: RequestRecord) -> None:
        if self._finished:
            return
        self._finished = True
        self.upstream_end(record.error_type if record.outcome != "ok" else None)
        root = self._root
        attributes: dict[str, str | int | list[str]] = {
            "gen_ai.request.model": record.model or "",
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "gen_ai.response.finish_reasons": list(record.finish_reasons),
            "http.response.status_code": record.status,
            "sparsegate.tenant": record.tenant or "",
            "sparsegate.pool": record.pool or "",
            "sparsegate.worker": record.worker or "",
            "sparsegate.attempts": record.attempts,
            "sparsegate.request_id": record.request_id,
        }
        if record.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = record.max_tokens
        if record.response_id:
            attributes["gen_ai.response.id"] = record.response_id
        root.set_attributes(attributes)
        if record.outcome == "error":
            root.set_status(Status(StatusCode.ERROR, record.error_type or "error"))
            root.set_attribute("error.type", record.error_type or "error")
        elif record.outcome == "cancelled":
            root.set_attribute("error.type", "cancelled")
        root.end()
