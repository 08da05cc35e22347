"""The simulator serves SGLang 0.5.23's routes, read from the real `http_server.py` (and the routers it
includes), not from our summary of them."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from sparsegate.backends.sim import SimConfig, create_app

from ..sglang_support import INSTALL_HINT

Route = tuple[str, str]


def _sglang_file(relative: str) -> Path:
    spec = importlib.util.find_spec("sglang")
    if spec is None or spec.origin is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return Path(spec.origin).parent / relative


def _decorated_routes(path: Path, owner: str) -> set[Route]:
    """(method, path) of every `@<owner>.get/post/api_route("<literal>")` in a module."""
    routes: set[Route] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)):
                continue
            if not (isinstance(deco.func.value, ast.Name) and deco.func.value.id == owner):
                continue
            if not (deco.args and isinstance(deco.args[0], ast.Constant) and isinstance(deco.args[0].value, str)):
                continue  # env-configurable routes (ollama, vertex): not part of the fixed surface
            route = deco.args[0].value
            if deco.func.attr == "api_route":
                methods = next((kw.value for kw in deco.keywords if kw.arg == "methods"), None)
                names = [e.value for e in methods.elts] if isinstance(methods, ast.List) else ["GET"]  # type: ignore[attr-defined]
                routes.update((str(m).upper(), _plain(route)) for m in names)
            elif deco.func.attr in ("get", "post", "put", "delete"):
                routes.add((deco.func.attr.upper(), _plain(route)))
    return routes


def sglang_routes() -> set[Route]:
    server = _sglang_file("srt/entrypoints/http_server.py")
    source = server.read_text()
    routes = _decorated_routes(server, "app")
    assert "app.include_router(v1_loads_router)" in source
    routes |= _decorated_routes(_sglang_file("srt/entrypoints/v1_loads.py"), "router")
    # /metrics is a Mount of prometheus_client's ASGI app (utils/common.py add_prometheus_middleware).
    assert 'Mount("/metrics"' in _sglang_file("srt/utils/common.py").read_text()
    routes.add(("GET", "/metrics"))
    return routes


def _plain(path: str) -> str:
    """`/v1/models/{model:path}` -> `/v1/models/{model}`, as OpenAPI writes path parameters."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def sim_routes(config: SimConfig) -> set[Route]:
    """The simulator's SGLang routes (its own `/sim/*` left out), read from the app's OpenAPI schema."""
    paths = create_app(config).openapi()["paths"]
    return {(m.upper(), p) for p, methods in paths.items() for m in methods if not p.startswith("/sim/")}


# What the gateway and its tests use; the sim must serve each exactly as SGLang registers it.
GATEWAY_SURFACE: set[Route] = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
    ("GET", "/health"),
    ("GET", "/health_generate"),
    ("GET", "/ready"),
    ("GET", "/get_model_info"),
    ("GET", "/model_info"),
    ("GET", "/get_server_info"),
    ("GET", "/server_info"),
    ("GET", "/v1/loads"),
    ("POST", "/abort_request"),
    ("GET", "/metrics"),
}


def test_every_sim_route_is_a_sglang_route() -> None:
    real = sglang_routes()
    assert sim_routes(SimConfig()) - real == set()


def test_the_gateway_surface_is_sglangs_and_the_sims() -> None:
    real = sglang_routes()
    assert GATEWAY_SURFACE - real == set(), "SGLang no longer registers these"
    assert GATEWAY_SURFACE - sim_routes(SimConfig()) == set()


def test_get_load_is_not_in_0_5_23_and_only_behind_the_legacy_flag() -> None:
    assert ("GET", "/get_load") not in sglang_routes()
    assert ("GET", "/get_load") not in sim_routes(SimConfig())
    assert sim_routes(SimConfig(legacy_get_load=True)) - sglang_routes() == {("GET", "/get_load")}
