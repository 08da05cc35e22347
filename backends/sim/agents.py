"""The simulated worker's agent-facing endpoints, as SGLang 0.5.23 serves them:

    POST /v1/responses, GET /v1/responses/{id}, POST /v1/responses/{id}/cancel   (`agents_responses`)
    POST /v1/messages, POST /v1/messages/count_tokens                             (`agents_messages`)
    POST /v1/embeddings, /v1/tokenize, /v1/detokenize (and /tokenize, /detokenize) (`agents_tokens`)

SGLang 0.5.23 has no DELETE for responses. `app.py` includes this router with one line.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from . import agents_tokens
from .agents_messages import count_tokens, create_message
from .agents_responses import ResponseStore, cancel_response, create_response, retrieve_response
from .protocol import parse_json_object
from .state import SimState


def agent_routes(sim: SimState) -> APIRouter:
    """Routes for the Responses, Anthropic Messages, embeddings and tokenizer endpoints of one worker."""
    router = APIRouter()
    store = ResponseStore()
    config = sim.config

    async def body_of(request: Request) -> dict[str, Any]:
        return parse_json_object(await request.body())

    @router.post("/v1/responses")
    async def responses(request: Request) -> Response:
        return await create_response(request, sim, store)

    @router.get("/v1/responses/{response_id}")
    async def responses_get(response_id: str) -> Response:
        return retrieve_response(store, response_id)

    @router.post("/v1/responses/{response_id}/cancel")
    async def responses_cancel(response_id: str) -> Response:
        return await cancel_response(sim, store, response_id)

    @router.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await create_message(request, sim)

    @router.post("/v1/messages/count_tokens")
    async def messages_count_tokens(request: Request) -> Response:
        return await count_tokens(request)

    @router.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return JSONResponse(agents_tokens.embed(await body_of(request), config.model))

    @router.post("/v1/tokenize")
    @router.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return JSONResponse(agents_tokens.tokenize(await body_of(request), config.max_context))

    @router.post("/v1/detokenize")
    @router.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        return JSONResponse(agents_tokens.detokenize(await body_of(request)))

    return router
