"""The path of one generation request: auth → plan → admission → route → relay → settle.

Each layer runs once. Planning (token count and pool choice) comes before admission because it has no side
effects and can refuse a request that no pool can hold without charging the tenant for it. From admission on,
the reservation is owned by the `Exchange`, which settles it on every path; if anything fails between admission
and handing over, it is settled here.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, TypeVar

from fastapi import Request
from pydantic import ValidationError

from sparsegate.gateway.errors import InvalidRequest, LimiterUnavailable, RateLimited, RequestTooLarge
from sparsegate.gateway.limits.base import AdmissionRequest
from sparsegate.gateway.protocol import ChatCompletionRequest, CompletionRequest
from sparsegate.gateway.record import RequestRecord
from sparsegate.gateway.relay import Exchange, Job
from sparsegate.gateway.state import GatewayState

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(request: Request) -> str:
    """Accept the caller's `x-request-id` when it is safe to log and echo; otherwise mint one."""
    given = request.headers.get("x-request-id")
    if given and _SAFE_REQUEST_ID.match(given):
        return given
    return f"req-{uuid.uuid4().hex}"


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    """Read the body under the size limit (declared or streamed) and parse it as a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"The request body is {int(declared)} bytes; the limit is {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


M = TypeVar("M", ChatCompletionRequest, CompletionRequest)


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        param = None
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            if param is None and err.get("loc"):
                param = str(err["loc"][0])
            problems.append(f"{loc or 'body'}: {err.get('msg')}")
        raise InvalidRequest("Invalid request: " + "; ".join(problems[:5]), param=param) from None


async def serve_generation(request: Request, state: GatewayState, endpoint: str) -> Exchange:
    """Run the layers up to admission and hand the admitted request to the relay."""
    record = RequestRecord(request_id=request.state.request_id, endpoint=endpoint)
    record.trace = state.tracing.start(record, request.headers)
    request.state.record = record

    with record.trace.stage("auth"):
        identity = state.keys.identify(request.headers)
    tenant = identity.tenant
    record.tenant, record.key_id = tenant.name, identity.key_id

    # parse
    data = await read_json_body(request, state.settings.max_request_bytes)
    body: ChatCompletionRequest | CompletionRequest
    body = _validate(ChatCompletionRequest, data) if endpoint == "chat" else _validate(CompletionRequest, data)
    record.model, record.stream = body.model, body.stream
    requested = body.requested_max_tokens()
    record.max_tokens = requested

    router = state.router
    messages = (
        [m.model_dump(exclude_unset=True) for m in body.messages] if isinstance(body, ChatCompletionRequest) else None
    )
    prompt = body.prompt if isinstance(body, CompletionRequest) else None
    tools = body.tools if isinstance(body, ChatCompletionRequest) else None
    with record.trace.stage("routing"):  # plan: visibility, token count, pool
        router.check_model(tenant, body.model)
        prompt_tokens = await router.count_for_plan(
            tenant, body.model, requested, messages=messages, prompt=prompt, tools=tools
        )
        plan = router.plan(tenant, body.model, prompt_tokens, requested)
    record.pool, record.prompt_tokens = plan.pool.name, prompt_tokens

    # admission: reserve prompt + completion budget for every choice
    model_limits = tenant.model_limits.get(body.model)
    admission = AdmissionRequest(
        tenant=tenant.name,
        model=body.model,
        limits=tenant.limits,
        model_limits=model_limits,
        tokens=prompt_tokens + plan.completion_budget * body.n,
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
    record.limit_decision = "degraded" if reservation.degraded else "admitted"
    record.admitted_at = record.elapsed()
    state.observer.on_admitted(record)
    request.state.rate_headers = reservation.state.headers()

    try:
        payload = body.model_dump(exclude_unset=True)
        payload.pop("priority", None)  # the tenant's priority is the gateway's to set, never the caller's
        if tenant.priority is not None:
            payload["priority"] = tenant.priority
        if plan.forced_max_tokens is not None:
            key = "max_completion_tokens" if "max_completion_tokens" in payload else "max_tokens"
            payload[key] = plan.forced_max_tokens
        if body.stream:
            # Always ask the worker for usage: settling and metrics need it; the relay drops it if unasked.
            payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        rid_prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        job = Job(
            path="/v1/chat/completions" if endpoint == "chat" else "/v1/completions",
            rid=f"{rid_prefix}-{uuid.uuid4().hex}",
            payload=payload,
            plan=plan,
            affinity_key=router.affinity_key(messages=messages, prompt=prompt),
            reservation=reservation,
            record=record,
            wants_usage=body.wants_usage,
            upstream_headers={"x-request-id": record.request_id},
            response_headers={"x-request-id": record.request_id, **reservation.state.headers()},
        )
        return Exchange(state.services, job)
    except BaseException:
        await state.limiter.settle(reservation, 0)
        raise
