"""The agent endpoints on the one request path: auth → plan → admission → route → relay → settle, as for chat.

    endpoint          worker route                          dialect     completion budget     pinned to a worker
    responses         POST /v1/responses                    responses   max_output_tokens     previous_response_id
    responses_get     GET  /v1/responses/{id}               responses   none                  always
    responses_cancel  POST /v1/responses/{id}/cancel        responses   none                  always
    messages          POST /v1/messages                     anthropic   max_tokens            -
    count_tokens      POST /v1/messages/count_tokens        anthropic   none                  -
    embeddings        POST /v1/embeddings                   openai      none (input charged)  -
    tokenize          POST /v1/tokenize, /v1/detokenize     openai      none                  -

A stored response lives in the memory of the worker that produced it. The gateway mints the response id (SGLang
answers with the request's `request_id`), records (tenant, id) → worker once the worker has accepted the request
(`responses_store.py`), and sends every follow-up there, without retrying elsewhere: no other worker has it. An id
the tenant does not own (another tenant's, an expired one, a made-up one) is a 404, the same answer for all three.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from pydantic import BaseModel

from sparsegate.gateway.agent_protocol import (
    DetokenizeRequest,
    EmbeddingRequest,
    MessagesCountRequest,
    MessagesRequest,
    ResponsesRequest,
    TokenizeRequest,
)
from sparsegate.gateway.context import Attempt, Job, RequestContext
from sparsegate.gateway.dialects import ANTHROPIC, EMBEDDINGS, OPENAI, RESPONSES, Dialect
from sparsegate.gateway.endpoints.intake import (
    Intake,
    read_count_tokens,
    read_embeddings,
    read_messages,
    read_responses,
)
from sparsegate.gateway.errors import InvalidRequest, ResponseNotFound
from sparsegate.gateway.intake import parse_object, read_body, validate
from sparsegate.gateway.responses_store import ResponseLocation
from sparsegate.gateway.settings import TenantConfig
from sparsegate.gateway.state import GatewayState, Snapshot
from sparsegate.gateway.wire import Receive, Scope, Send


@dataclass(frozen=True)
class EndpointSpec:
    """One agent endpoint: how its body is read, where it goes on the worker, and how it looks on the wire."""

    path: str
    dialect: Dialect
    model: type[BaseModel] | None = None  # the request body's model; None for routes without a body
    read: Callable[[Any], Intake] | None = None
    method: str = "POST"
    rid_field: str | None = None  # the body field that carries the attempt's id (SGLang's `rid` or `request_id`)
    budget_field: str | None = None  # where a forced completion cap goes
    follows: bool = False  # addressed to a stored response (its id in the path)


def _passthrough(body: BaseModel) -> Intake:
    model = str(getattr(body, "model", ""))
    return Intake(model=model, payload=body.model_dump(exclude_unset=True), max_tokens=0)


AGENT_ENDPOINTS: dict[str, EndpointSpec] = {
    "responses": EndpointSpec(
        "/v1/responses",
        RESPONSES,
        ResponsesRequest,
        read_responses,
        rid_field="request_id",
        budget_field="max_output_tokens",
    ),
    "responses_get": EndpointSpec("/v1/responses/{id}", RESPONSES, method="GET", follows=True),
    "responses_cancel": EndpointSpec("/v1/responses/{id}/cancel", RESPONSES, follows=True),
    "messages": EndpointSpec("/v1/messages", ANTHROPIC, MessagesRequest, read_messages, budget_field="max_tokens"),
    "count_tokens": EndpointSpec("/v1/messages/count_tokens", ANTHROPIC, MessagesCountRequest, read_count_tokens),
    "embeddings": EndpointSpec("/v1/embeddings", EMBEDDINGS, EmbeddingRequest, read_embeddings, rid_field="rid"),
    "tokenize": EndpointSpec("/v1/tokenize", OPENAI, TokenizeRequest, _passthrough),
    "detokenize": EndpointSpec("/v1/detokenize", OPENAI, DetokenizeRequest, _passthrough),
}
# The POST routes the gateway's dispatcher serves directly (the two addressed by id go through FastAPI's routing).
AGENT_PATHS = {spec.path: name for name, spec in AGENT_ENDPOINTS.items() if not spec.follows}


def mint_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


async def _locate(state: GatewayState, tenant: TenantConfig, response_id: str, param: str) -> ResponseLocation:
    location = await state.responses.locate(tenant.name, response_id)
    if location is None:
        raise ResponseNotFound(f"Response with id '{response_id}' not found.", param=param)
    return location


async def agent_layers(
    state: GatewayState,
    snapshot: Snapshot,
    ctx: RequestContext,
    scope: Scope,
    headers: dict[str, str],
    receive: Receive,
    send: Send,
) -> None:
    """Serve one agent request up to the relay; the pipeline's `serve` owns the context and settles it."""
    from sparsegate.gateway.pipeline import admit, relay_watched  # the pipeline imports this module

    spec = AGENT_ENDPOINTS[ctx.endpoint]
    record = ctx.record
    trace = record.trace = state.tracing.start(record, headers)
    with trace.stage("auth"):
        identity = state.keys.identify(headers)
    tenant = identity.tenant
    record.tenant, record.key_id = tenant.name, identity.key_id

    location: ResponseLocation | None = None
    response_id = ""
    if spec.follows:
        response_id = str(scope.get("path_params", {}).get("response_id", ""))
        location = await _locate(state, tenant, response_id, "response_id")
        pool = state.router.pool_config(location.pool)
        if pool is None:
            raise ResponseNotFound(f"Response with id '{response_id}' not found.", param="response_id")
        intake = Intake(model=pool.model, payload={}, max_tokens=0)
    else:
        assert spec.model is not None and spec.read is not None
        data = parse_object(await read_body(receive, headers, snapshot.max_request_bytes))
        intake = spec.read(validate(spec.model, data))
        if intake.previous_response_id is not None:
            location = await _locate(state, tenant, intake.previous_response_id, "previous_response_id")
    record.model, record.stream, record.max_tokens = intake.model, intake.stream, intake.max_tokens

    router = state.router
    with trace.stage("routing"):
        router.check_model(tenant, intake.model)
        prompt_tokens = 0
        if intake.messages is not None or intake.prompt is not None:
            prompt_tokens = await router.count_for_plan(
                tenant,
                intake.model,
                intake.max_tokens,
                messages=intake.messages,
                prompt=intake.prompt,
                tools=intake.tools,
            )
        plan = router.plan(tenant, intake.model, prompt_tokens, intake.max_tokens)
        if location is not None:
            # The stored conversation is on that worker: its pool it is, if the tenant may still use it.
            open_pools = {p.name: p for p in router.open_pools(tenant, intake.model)}
            if location.pool not in open_pools:
                raise ResponseNotFound(f"Response with id '{response_id or intake.previous_response_id}' not found.")
            plan = replace(plan, pool=open_pools[location.pool])
    record.pool, record.prompt_tokens = plan.pool.name, prompt_tokens

    payload = intake.payload
    for owned in ("rid", "request_id", "priority"):
        payload.pop(owned, None)  # the gateway's to set, never the caller's
    if tenant.priority is not None and spec.rid_field is not None:
        payload["priority"] = tenant.priority
    if plan.forced_max_tokens is not None and spec.budget_field is not None:
        payload[spec.budget_field] = plan.forced_max_tokens
    try:
        encoded = orjson.dumps(payload) if spec.method == "POST" else b""
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"The request cannot be encoded for the worker: {exc}.") from None

    await admit(state, ctx, identity, intake.model, prompt_tokens + plan.completion_budget)

    rid = mint_response_id() if ctx.endpoint == "responses" else f"{ctx.endpoint}-{uuid.uuid4().hex}"
    on_opened = None
    if ctx.endpoint == "responses" and intake.store:

        async def on_opened(attempt: Attempt) -> None:
            where = ResponseLocation(pool=attempt.worker.pool, worker=attempt.worker.url)
            await state.responses.remember(tenant.name, attempt.rid, where)

    ctx.job = Job(
        path=spec.path.format(id=response_id),
        rid=rid,
        body=encoded,
        stream=intake.stream,
        n=1,
        plan=plan,
        affinity_key=router.affinity_key(messages=intake.messages, prompt=intake.prompt),
        wants_usage=True,
        upstream_headers={"x-request-id": record.request_id},
        dialect=spec.dialect,
        method=spec.method,
        rid_field=spec.rid_field,
        pinned_worker=location.worker if location is not None else None,
        on_opened=on_opened,
    )
    await relay_watched(state, snapshot, ctx, receive, send)
