"""The simulated worker's HTTP surface: SGLang's endpoints, plus `/sim/*` for tests to steer and inspect it.

SGLang's surface (see /work/shared/GATEWAY.md §4):

    POST /v1/chat/completions, /v1/completions   generation, streamed or not (see `serving`)
    GET  /v1/models                              data[].id = served name, data[].max_model_len
    GET  /health, /health_generate               liveness; one real token through the engine
    GET  /get_model_info, /model_info            model path, ...
    GET  /get_server_info, /server_info          server args incl. context_length, internal_states
    GET  /get_load                               [{dp_rank, num_reqs, num_waiting_reqs, num_tokens, ...}]
    POST /abort_request                          {"rid": ...} or {"abort_all": true}; always 200, empty body
    GET  /metrics                                sglang:* gauges and counters, per-app registry

The simulator's own:

    GET/POST /sim/faults    current fault settings / change any subset of them
    GET  /sim/stats         counters, live rids and the last requests (see `stats`)
    POST /sim/reset         zero the counters and forget the recent requests
    GET  /sim/config        the `SimConfig` in force
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .agents import agent_routes
from .config import SimConfig
from .errors import BadRequest, NotFound, SimError, error_response
from .protocol import parse_json_object
from .serving import probe_health, serve_generation
from .state import SimState

SIM_VERSION = "sparsegate-sim-0.1"


def create_app(config: SimConfig, *, state: SimState | None = None) -> FastAPI:
    """Build one simulated worker. Pass `state` to keep a handle on it (tests call `state.aclose()`)."""
    sim = state if state is not None else SimState.build(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await sim.aclose()

    app = FastAPI(title="sparsegate simulated SGLang worker", lifespan=lifespan, openapi_url=None)
    app.state.sim = sim
    app.add_exception_handler(SimError, _answer_error)
    app.add_exception_handler(StarletteHTTPException, _answer_error)
    app.add_exception_handler(RequestValidationError, _answer_error)
    app.include_router(_sglang_routes(sim))
    app.include_router(agent_routes(sim))  # Responses, Messages, embeddings, tokenize: see agents.py
    app.include_router(_sim_routes(sim))
    return app


async def _answer_error(_: Request, exc: Exception) -> Response:
    if isinstance(exc, SimError):
        return error_response(exc)
    if isinstance(exc, StarletteHTTPException):
        return error_response(NotFound(str(exc.detail), status=exc.status_code))
    return error_response(BadRequest(str(exc)))


async def _json_object(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def _sglang_routes(sim: SimState) -> APIRouter:
    router = APIRouter()
    config = sim.config

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve_generation(request, sim, "chat")

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve_generation(request, sim, "completions")

    @router.get("/health")
    async def health() -> Response:
        return Response(status_code=503 if sim.faults.settings.unhealthy else 200)

    @router.get("/health_generate")
    async def health_generate() -> Response:
        return Response(status_code=200 if await probe_health(sim) else 503)

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": config.model,
            "object": "model",
            "created": int(sim.started_at),
            "owned_by": "sglang",
            "root": config.effective_model_path,
            "max_model_len": config.max_context,
        }
        return {"object": "list", "data": [card]}

    @router.get("/get_model_info")
    @router.get("/model_info")
    async def model_info() -> dict[str, Any]:
        return {
            "model_path": config.effective_model_path,
            "tokenizer_path": config.effective_model_path,
            "served_model_name": config.model,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "sparsegate_sim",
            "architectures": ["SimulatedForCausalLM"],
            "context_length": config.max_context,
        }

    @router.get("/get_server_info")
    @router.get("/server_info")
    async def server_info() -> dict[str, Any]:
        return {
            "model_path": config.effective_model_path,
            "tokenizer_path": config.effective_model_path,
            "served_model_name": config.model,
            "context_length": config.max_context,
            "host": config.host,
            "port": config.port,
            "tp_size": 1,
            "dp_size": 1,
            "max_running_requests": config.max_running,
            "max_total_num_tokens": config.kv_capacity_tokens,
            "enable_metrics": True,
            "internal_states": [
                {"last_gen_throughput": sim.metrics.throughput(), "num_running_reqs": sim.engine.running}
            ],
            "version": SIM_VERSION,
            "simulated": True,
            "sim_config": config.to_json(),
        }

    @router.get("/get_load")
    async def get_load() -> list[dict[str, Any]]:
        engine = sim.engine
        return [
            {
                "dp_rank": 0,
                "num_reqs": engine.running + engine.queued,
                "num_running_reqs": engine.running,
                "num_waiting_reqs": engine.queued,
                # Tokens the worker is holding or about to: KV in use plus prompts still queued.
                "num_tokens": engine.kv_used_tokens + engine.queued_prompt_tokens,
                "num_pending_tokens": engine.queued_prompt_tokens,
                "num_total_tokens": engine.kv_capacity_tokens,
                "token_usage": engine.token_usage(),
                "ts_tic": time.perf_counter(),
            }
        ]

    @router.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await _json_object(request)
        rid, abort_all = body.get("rid", ""), body.get("abort_all", False)
        if not isinstance(rid, str) or not isinstance(abort_all, bool):
            raise BadRequest("'rid' must be a string and 'abort_all' a boolean.")
        if abort_all:
            sim.engine.abort_all()
        elif rid:
            sim.engine.abort(rid)  # an unknown rid is not an error, as in SGLang
        return Response(status_code=200)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(sim.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router


def _sim_routes(sim: SimState) -> APIRouter:
    router = APIRouter(prefix="/sim")

    @router.get("/faults")
    async def get_faults() -> dict[str, Any]:
        return sim.faults.settings.model_dump()

    @router.post("/faults")
    async def set_faults(request: Request) -> dict[str, Any]:
        patch = await _json_object(request)
        try:
            return sim.faults.update(patch).model_dump()
        except ValidationError as exc:
            raise BadRequest(f"Invalid fault settings: {exc}") from exc

    @router.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return sim.stats.snapshot(sim.live_view())

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        sim.stats.reset()
        return sim.stats.snapshot(sim.live_view())

    @router.get("/config")
    async def get_config() -> dict[str, Any]:
        return sim.config.to_json()

    return router
