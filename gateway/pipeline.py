"""The path of one generation request: shed → auth → parse → plan → admission → route and relay → settle.

`serve` owns the request's `RequestContext` from the first byte to the last, and its one `finally` settles the
reservation and reports the record (metrics, log, span, observers) exactly once, on every path: success, refusal,
upstream failure, timeout, client gone, gateway bug.

Planning (token count and pool choice) comes before admission because it has no side effects and can refuse a
request that no pool can hold without charging the tenant. Shedding comes before everything: a process at its bound
answers 503 in microseconds and charges nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import orjson

from sparsegate.gateway.auth import Identity
from sparsegate.gateway.context import Job, RequestContext, mint_id
from sparsegate.gateway.endpoints.layers import AGENT_ENDPOINTS, AGENT_PATHS, agent_layers
from sparsegate.gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    LimiterUnavailable,
    RateLimited,
    UpstreamError,
)
from sparsegate.gateway.intake import ClientDisconnected, parse_object, read_body, request_id_of, validate
from sparsegate.gateway.limits.base import AdmissionRequest
from sparsegate.gateway.observability.logs import request_id_var
from sparsegate.gateway.protocol import ChatCompletionRequest, CompletionRequest
from sparsegate.gateway.queueing import Ticket
from sparsegate.gateway.record import RequestRecord
from sparsegate.gateway.relay import relay
from sparsegate.gateway.relay.attempts import router_outcome
from sparsegate.gateway.relay.mend import sample_rids, worker_choices
from sparsegate.gateway.routing import Outcome
from sparsegate.gateway.state import GatewayState, Snapshot
from sparsegate.gateway.wire import Receive, Scope, Send, header_map

log = logging.getLogger("sparsegate.pipeline")

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", **AGENT_PATHS}


async def serve(state: GatewayState, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
    """Serve one generation request on the raw ASGI interface."""
    snapshot = state.snapshot  # one consistent configuration for the whole request
    headers = header_map(scope)
    request_id = request_id_of(headers)
    request_id_var.set(request_id)  # every log line of this request carries it (observability/logs.py)
    record = RequestRecord(request_id=request_id, endpoint=endpoint)
    ctx = RequestContext(request_id, endpoint, record, asyncio.current_task(), {"x-request-id": request_id})
    entered = False
    try:
        state.shedder.enter()
        entered = True
        if ctx.endpoint in AGENT_ENDPOINTS:
            ctx.dialect = AGENT_ENDPOINTS[ctx.endpoint].dialect
            await agent_layers(state, snapshot, ctx, scope, headers, receive, send)
        else:
            await _layers(state, snapshot, ctx, headers, receive, send)
    except asyncio.CancelledError:
        if not ctx.take_interrupt():
            raise  # the server cancelled us (shutdown): the finally still settles
    except ClientDisconnected:
        ctx.client_gone = True
    except GatewayError as exc:
        ctx.fail(exc)
        await _respond_error(ctx, send, exc)
    except Exception as exc:  # a gateway bug: log it; answer 500 if nothing was sent yet
        log.exception("request %s failed", request_id)
        ctx.fail(exc)
        await _respond_error(ctx, send, InternalError("The server had an error while processing your request."))
    finally:
        if entered:
            state.shedder.leave()
        await _settle_and_report(state, ctx)


async def _layers(
    state: GatewayState, snapshot: Snapshot, ctx: RequestContext, headers: dict[str, str], receive: Receive, send: Send
) -> None:
    record = ctx.record
    trace = record.trace = state.tracing.start(record, headers)
    with trace.stage("auth"):
        identity = state.keys.identify(headers)
    tenant = identity.tenant
    record.tenant, record.key_id = tenant.name, identity.key_id

    # parse: strict JSON, strict types (the validated dict is what goes on, as the client set it)
    data = parse_object(await read_body(receive, headers, snapshot.max_request_bytes))
    chat = ctx.endpoint == "chat"
    body: ChatCompletionRequest | CompletionRequest
    body = validate(ChatCompletionRequest, data) if chat else validate(CompletionRequest, data)
    record.model, record.stream = body.model, body.stream
    requested = body.requested_max_tokens()
    record.max_tokens = requested

    router = state.router
    messages: list[dict[str, Any]] | None = data["messages"] if chat else None
    prompt = body.prompt if isinstance(body, CompletionRequest) else None
    tools = body.tools if isinstance(body, ChatCompletionRequest) else None
    with trace.stage("routing"):  # plan: visibility, token count, pool
        router.check_model(tenant, body.model)
        prompt_tokens = await router.count_for_plan(
            tenant, body.model, requested, messages=messages, prompt=prompt, tools=tools
        )
        plan = router.plan(tenant, body.model, prompt_tokens, requested)
    record.pool, record.prompt_tokens = plan.pool.name, prompt_tokens

    # the worker's payload, encoded before anything is charged: what cannot be encoded is the request's fault
    payload = data
    payload.pop("priority", None)  # the tenant's priority is the gateway's to set, never the caller's
    payload.pop("rid", None)  # so is the worker-facing request id
    if tenant.priority is not None:
        payload["priority"] = tenant.priority
    if plan.forced_max_tokens is not None:
        payload["max_completion_tokens" if "max_completion_tokens" in payload else "max_tokens"] = (
            plan.forced_max_tokens
        )
    if body.stream:
        # Always ask the worker for usage: settling and metrics need it; the relay drops it if unasked.
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    try:
        encoded = orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"The request cannot be encoded for the worker: {exc}.") from None

    # admission: reserve prompt + completion budget for every choice (n of each prompt of a completions batch)
    choices, expands_rid = worker_choices(body.n, prompt)
    await admit(state, ctx, identity, body.model, prompt_tokens + plan.completion_budget * choices)

    ctx.job = Job(
        path="/v1/chat/completions" if chat else "/v1/completions",
        rid=mint_id("chatcmpl" if chat else "cmpl"),
        body=encoded,
        stream=body.stream,
        n=choices,
        expands_rid=expands_rid,
        plan=plan,
        affinity_key=router.affinity_key(messages=messages, prompt=prompt),
        wants_usage=body.wants_usage,
        upstream_headers={"x-request-id": record.request_id},
    )
    await relay_watched(state, snapshot, ctx, receive, send)


async def admit(state: GatewayState, ctx: RequestContext, identity: Identity, model: str, tokens: int) -> None:
    """Admission: one atomic step over the tenant's (and key's) limits, reserving `tokens`; the reservation is
    the context's from here, so the pipeline's `finally` settles it."""
    tenant, record = identity.tenant, ctx.record
    admission = AdmissionRequest(
        tenant=tenant.name,
        model=model,
        limits=tenant.limits,
        model_limits=tenant.model_limits.get(model),
        tokens=tokens,
        request_id=record.request_id,
        on_failure=tenant.on_limiter_failure,
        budgets=tenant.budgets,
        key_id=identity.key_id,
        key_budgets=identity.key_budgets,
    )
    try:
        with record.trace.stage("admission"):
            reservation = await state.limiter.admit(admission)
    except RateLimited as exc:
        record.limit_decision = exc.kind
        raise
    except LimiterUnavailable:
        record.limit_decision = "unavailable"
        raise
    ctx.reservation = reservation
    record.limit_decision = "degraded" if reservation.degraded else "admitted"
    record.admitted_at = record.elapsed()
    state.observer.on_admitted(record)
    ctx.response_headers.update(ctx.dialect.rate_headers(reservation.state.headers()))


async def relay_watched(
    state: GatewayState, snapshot: Snapshot, ctx: RequestContext, receive: Receive, send: Send
) -> None:
    """Take a slot in the pool, then relay `ctx.job`. From here the client is watched: if it leaves, the queue wait
    or the relay is cancelled (and the worker told) at once."""
    assert ctx.job is not None and ctx.record.tenant is not None
    watcher = asyncio.get_running_loop().create_task(_watch_client(receive, ctx))
    ctx.relaying = True
    try:
        # At once while the pool has room, else in the tenant's fair queue (gateway/queueing/).
        ticket = state.gate.try_take(ctx.job.plan.pool.name, ctx.record.tenant)
        if ticket is None:
            with ctx.record.trace.stage("queue"):
                ticket, snapshot = await _wait_for_slot(state, snapshot, ctx.record, ctx.job)
        try:
            await relay(state, snapshot, ctx, send)
        finally:
            state.gate.release(ticket)
    finally:
        ctx.relaying = False
        watcher.cancel()


async def _wait_for_slot(
    state: GatewayState, snapshot: Snapshot, record: RequestRecord, job: Job
) -> tuple[Ticket, Snapshot]:
    """Wait in the fair queue; the wait counts against the first-byte deadline, so the relay gets what is left."""
    assert record.tenant is not None
    tenant = state.keys.tenant(record.tenant)
    timeouts = snapshot.timeouts
    deadline_s = timeouts.first_byte_s if job.stream else timeouts.total_s
    ticket = await state.gate.wait(
        job.plan.pool.name,
        record.tenant,
        tier=(tenant.priority or 0) if tenant is not None else 0,
        weight=tenant.weight if tenant is not None else 1.0,
        budget_s=min(snapshot.settings.fair_share.max_wait_s, deadline_s),
    )
    record.queue_s = ticket.queued_s
    left = timeouts.model_copy(
        update={
            "first_byte_s": max(0.001, timeouts.first_byte_s - ticket.queued_s),
            "total_s": max(0.001, timeouts.total_s - ticket.queued_s),
        }
    )
    return ticket, dataclasses.replace(snapshot, timeouts=left)


async def _watch_client(receive: Receive, ctx: RequestContext) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not ctx.response_done:
                ctx.client_gone = True
                ctx.interrupt()
            return


async def _respond_error(ctx: RequestContext, send: Send, exc: GatewayError) -> None:
    if ctx.client_gone or ctx.response_done:
        return
    dialect = ctx.dialect
    if ctx.headers_sent:
        # Too late for a status code: the stream carries the error, then ends properly.
        await ctx.send_last(send, dialect.error_event(exc, ctx.tally) + dialect.done_event)
        return
    ctx.record.first_byte_at = time.perf_counter()
    status, raw, body = dialect.raw_error(exc, ctx.response_headers)
    await ctx.start_response(send, status, raw)
    await ctx.send_last(send, body)


def _release_outcome(ctx: RequestContext) -> Outcome:
    record = ctx.record
    if record.outcome == "ok":
        return "ok"
    if record.outcome == "cancelled":
        return "cancelled"
    if isinstance(ctx.failure, UpstreamError):
        return router_outcome(ctx.failure)  # chat/completions' worker error events included (UpstreamStreamError)
    if record.error_type == "UpstreamStreamError":
        return "upstream_error"  # a typed stream's (Responses, Messages) worker error event, recorded by name
    return "cancelled"  # the gateway's own failure says nothing about the worker


async def _settle_and_report(state: GatewayState, ctx: RequestContext) -> None:
    record = ctx.record
    if ctx.client_gone:
        record.outcome, record.error_type = "cancelled", "ClientDisconnected"
        if record.first_byte_at is None:
            record.status = 499  # nginx's "client closed request": nothing was sent
    attempt = ctx.attempt
    try:
        if attempt is not None:
            if attempt.response is not None:
                await attempt.response.aclose()
            if not ctx.upstream_complete:
                # Dropped before the worker finished (client gone, stall, gateway error): SGLang would notice the
                # closed connection only seconds later, so tell it now, without making this request wait.
                # With n > 1 the worker runs one request per sample (`rid_i`), and the base rid matches none.
                job = ctx.job
                for rid in sample_rids(attempt.rid, job.n, job.expands_rid) if job is not None else [attempt.rid]:
                    state.spawn(state.upstream.abort(attempt.worker.url, rid))
            state.router.release(attempt.worker, _release_outcome(ctx))
        if ctx.reservation is not None:
            # Charge what the worker did: the prompt and the tokens generated. A request that failed before it
            # produced anything is refunded whole; a disconnect pays for the prompt and what was streamed.
            nothing_done = attempt is None or (record.outcome == "error" and record.completion_tokens == 0)
            used = 0 if nothing_done else record.prompt_tokens + record.completion_tokens
            record.charged = not nothing_done  # the ledger records tokens as charged
            await asyncio.shield(state.limiter.settle(ctx.reservation, used))
    except Exception:
        log.exception("settling %s failed", record.request_id)
    finally:
        record.ended_at = time.perf_counter()
        state.observer.on_finish(record)
