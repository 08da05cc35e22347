"""The simulated worker's HTTP surface: SGLang's endpoints, plus `/sim/*` for tests to steer and inspect it.

SGLang 0.5.23's surface, as its `http_server.py` registers it (tests/backends/contract compares the routes):

    POST /v1/chat/completions, /v1/completions   generation, streamed or not (see `serving`)
    GET  /v1/models, /v1/models/{model}          ModelList / ModelCard: id = root = served name, max_model_len
    GET  /health, /health_generate, /ready       liveness; one real token through the engine; readiness
    GET  /get_model_info, /model_info            model path, parsers, ...
    GET  /get_server_info, /server_info          server args incl. context_length, internal_states, version
    GET  /v1/loads                               {timestamp, version, accelerator, num_accelerators, loads: [...]}
    GET  /get_load                               only with --legacy-get-load: what releases before /v1/loads had
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
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .agents import agent_routes
from .config import SimConfig
from .errors import InvalidBody, NotFound, SimError, error_response
from .loads import legacy_get_load, v1_loads
from .protocol import parse_json_object
from .serving import probe_health, serve_generation
from .state import SimState

SGLANG_VERSION = "0.5.23"
"""The release whose behaviour the simulator follows (reported as `version`)."""


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
    return error_response(InvalidBody(str(exc)))


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

    @router.get("/ready")
    async def ready() -> Response:
        return Response(status_code=503 if sim.faults.settings.unhealthy else 200)

    def card(model: str) -> dict[str, Any]:
        created = int(time.time())
        return {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "sglang",
            "root": model,
            "parent": None,
            "max_model_len": config.max_context,
        }

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card(config.model)]}

    @router.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> Response:
        if model != config.model:
            error = {
                "message": f"The model '{model}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            return JSONResponse({"error": error}, status_code=404)
        return JSONResponse(card(model))

    @router.get("/get_model_info")
    @router.get("/model_info")
    async def model_info() -> dict[str, Any]:
        return {
            "model_path": config.effective_model_path,
            "served_model_name": config.model,
            "tokenizer_path": config.effective_model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "load_format": "auto",
            "reasoning_parser": None,
            "tool_call_parser": None,
            "disaggregation_mode": "null",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "sparsegate_sim",
            "architectures": ["SimulatedForCausalLM"],
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
            "enable_cache_report": config.enable_cache_report,
            "enable_priority_scheduling": config.enable_priority_scheduling,
            "startup_time": sim.started_at,
            "internal_states": [
                {
                    "last_gen_throughput": sim.metrics.throughput(),
                    "num_running_reqs": sum(sim.engine.running_by_priority().values()),
                }
            ],
            "version": SGLANG_VERSION,
            "frontend": "python",
            "simulated": True,
            "sim_config": config.to_json(),
        }

    @router.get("/v1/loads", response_model=None)
    async def loads(
        dp_rank: int | None = None, include: str | None = None, format: str | None = None
    ) -> dict[str, Any] | Response:
        return v1_loads(sim, dp_rank=dp_rank, include=include, prometheus=format == "prometheus")

    if config.legacy_get_load:

        @router.get("/get_load")
        async def get_load() -> list[dict[str, Any]]:
            return legacy_get_load(sim)

    @router.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await _json_object(request)
        rid, abort_all = body.get("rid", ""), body.get("abort_all", False)
        if not isinstance(rid, str) or not isinstance(abort_all, bool):
            raise InvalidBody("'rid' must be a string and 'abort_all' a boolean.")
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
            raise InvalidBody(f"Invalid fault settings: {exc}") from exc

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
