"""The HTTP surface: OpenAI's endpoints plus liveness and readiness. Routes raise; they never build error JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from sparsegate.gateway.errors import ModelNotFound
from sparsegate.gateway.pipeline import serve
from sparsegate.gateway.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from sparsegate.gateway.state import GatewayState, gateway_state

api = APIRouter()


def _body_schema(model: type[ChatCompletionRequest] | type[CompletionRequest]) -> dict[str, Any]:
    # The body is read by hand (auth first, size limit while streaming), so describe it for /docs explicitly.
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


class _Pipeline(Response):
    """Hands the raw ASGI exchange to the pipeline. The gateway's dispatcher (app.py) serves these routes before
    FastAPI sees them; this path documents them in OpenAPI and serves them when the FastAPI app runs alone."""

    def __init__(self, state: GatewayState, endpoint: str) -> None:
        self.status_code = 200
        self.background = None
        self._state = state
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve(self._state, scope, receive, send, self._endpoint)


async def _generate(request: Request, endpoint: str) -> Response:
    return _Pipeline(gateway_state(request), endpoint)


@api.post("/v1/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest), tags=["openai"])
async def create_chat_completion(request: Request) -> Response:
    """OpenAI chat completions, streaming or not, routed to a worker pool by model, tenant and context length."""
    return await _generate(request, "chat")


@api.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest), tags=["openai"])
async def create_completion(request: Request) -> Response:
    """OpenAI (legacy) text completions."""
    return await _generate(request, "completions")


@api.post("/v1/responses", tags=["openai"])
async def create_response(request: Request) -> Response:
    """OpenAI Responses: stream (typed events) or whole, tools, `store`; `previous_response_id` goes to the worker
    that holds that response."""
    return await _generate(request, "responses")


@api.get("/v1/responses/{response_id}", tags=["openai"])
async def retrieve_response(response_id: str, request: Request) -> Response:
    """A stored response of this key's tenant, from the worker that holds it; 404 for any other id."""
    return await _generate(request, "responses_get")


@api.post("/v1/responses/{response_id}/cancel", tags=["openai"])
async def cancel_response(response_id: str, request: Request) -> Response:
    """Cancel a background response of this key's tenant on the worker that runs it; 404 for any other id."""
    return await _generate(request, "responses_cancel")


@api.post("/v1/messages", tags=["anthropic"])
async def create_message(request: Request) -> Response:
    """Anthropic Messages, stream (Anthropic's event names) or whole, with tools; keys as `x-api-key` or Bearer;
    errors in Anthropic's envelope; `anthropic-ratelimit-*` headers."""
    return await _generate(request, "messages")


@api.post("/v1/messages/count_tokens", tags=["anthropic"])
async def count_message_tokens(request: Request) -> Response:
    """The prompt's token count by the model's own tokenizer on a worker."""
    return await _generate(request, "count_tokens")


@api.post("/v1/embeddings", tags=["openai"])
async def create_embeddings(request: Request) -> Response:
    """Embeddings, for embedding models; their input tokens are charged."""
    return await _generate(request, "embeddings")


@api.post("/v1/tokenize", tags=["sglang"])
async def tokenize(request: Request) -> Response:
    """The served model's own tokenizer (SGLang's `/v1/tokenize`)."""
    return await _generate(request, "tokenize")


@api.post("/v1/detokenize", tags=["sglang"])
async def detokenize(request: Request) -> Response:
    """Token ids back to text (SGLang's `/v1/detokenize`)."""
    return await _generate(request, "detokenize")


def _cards(state: GatewayState, request: Request) -> list[ModelCard]:
    tenant = state.keys.authenticate(request.headers)
    return [
        ModelCard(id=m.id, created=state.started_at, max_model_len=m.max_context)
        for m in state.router.list_models(tenant)
    ]


@api.get("/v1/models", response_model=ModelList, tags=["openai"])
async def list_models(request: Request) -> ModelList:
    """The models this key may use, each with the largest context length any of its pools serves."""
    return ModelList(data=_cards(gateway_state(request), request))


@api.get("/v1/models/{model_id:path}", response_model=ModelCard, tags=["openai"])
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    for card in _cards(gateway_state(request), request):
        if card.id == model_id:
            return card
    raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param="model")


@api.get("/metrics", tags=["admin"], openapi_extra={"security": [{"AdminKey": []}]})
async def metrics(request: Request) -> Response:
    """Prometheus text format, for an admin key only: the series name every tenant and worker. Prometheus scrapes
    `metrics_port` instead (no auth, keep it internal), or sends an admin key as its bearer token."""
    request.app.state.admin.check_admin(request.headers)
    return Response(gateway_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@api.get("/health/live", tags=["health"])
async def live() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@api.get("/health/ready", tags=["health"])
async def ready(request: Request) -> JSONResponse:
    """Ready when every pool has a healthy worker; 503 names the pools that have none. `saturation` says, per pool,
    its slots (limit, in use), the requests waiting in the fair queue, and whether it is full: a saturated pool is
    still ready (requests wait their turn), so it does not change the status."""
    state = gateway_state(request)
    pools = state.router.readiness()
    empty = sorted(name for name, counts in pools.items() if counts.get("healthy", 0) == 0)
    status = "ok" if not empty else ("degraded" if len(empty) < len(pools) else "unavailable")
    code = 503 if status == "unavailable" else 200
    saturation = state.gate.saturation()
    body = {
        "status": status,
        "pools": pools,
        "pools_without_healthy_workers": empty,
        "saturation": saturation,
        "saturated_pools": sorted(name for name, s in saturation.items() if s["saturated"]),
    }
    return JSONResponse(body, status_code=code)
