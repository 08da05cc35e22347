"""The served OpenAPI document: every route with its request body, its error responses and its auth.

FastAPI's own document had two gaps. Request bodies read by hand (the generation routes read the body themselves, so
that auth and the size limit come first) were described by `model_json_schema()`, whose nested models sit under a
local `$defs` that the document never defines once the schema is embedded: the refs dangled, and schema-driven
clients and fuzzers could not build a body. And nothing said how to authenticate or what an error looks like.

`build_openapi` fixes both after FastAPI has generated the document: every `$defs` block is hoisted into
`components/schemas` and its refs rewritten; each authenticated route names both key schemes (Bearer, and
`x-api-key` as Anthropic clients send it) and lists its error statuses with the envelope its API uses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from sparsegate.gateway.agent_protocol import (
    DetokenizeRequest,
    EmbeddingRequest,
    MessagesCountRequest,
    MessagesRequest,
    ResponsesRequest,
    TokenizeRequest,
)
from sparsegate.gateway.protocol import ChatCompletionRequest, CompletionRequest

# Routes served without a key.
PUBLIC_PATHS = frozenset({"/health/live", "/health/ready"})
ERROR_STATUSES = {
    "400": "Malformed body, bad values, or the prompt fits no pool (`context_length_exceeded`)",
    "401": "Missing or unknown API key",
    "403": "The key may not use this model",
    "404": "Unknown model, route or (another tenant's) response id",
    "413": "Body over the size limit",
    "429": "A rate limit was hit; `retry-after` says when to retry",
    "500": "A gateway bug",
    "502": "The worker failed",
    "503": "No healthy worker, or the gateway is saturated; `retry-after` says when to retry",
    "504": "The worker did not answer in time",
}
# Request bodies the routes read by hand, by (method, path).
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/v1/chat/completions"): ChatCompletionRequest,
    ("post", "/v1/completions"): CompletionRequest,
    ("post", "/v1/responses"): ResponsesRequest,
    ("post", "/v1/messages"): MessagesRequest,
    ("post", "/v1/messages/count_tokens"): MessagesCountRequest,
    ("post", "/v1/embeddings"): EmbeddingRequest,
    ("post", "/v1/tokenize"): TokenizeRequest,
    ("post", "/v1/detokenize"): DetokenizeRequest,
}


class _OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error envelope (every route but Anthropic's)."""

    error: _OpenAIErrorDetail


class _AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error envelope (`/v1/messages*`)."""

    type: str = "error"
    error: _AnthropicErrorDetail


def _schema_ref(model: type[BaseModel]) -> str:
    return f"#/components/schemas/{model.__name__}"


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> str:
    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in body.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas[model.__name__] = body
    return _schema_ref(model)


def _hoist_defs(node: Any, schemas: dict[str, Any]) -> Any:
    """Move every nested `$defs` into `components/schemas` and point its refs there."""
    if isinstance(node, dict):
        for name, sub in node.pop("$defs", {}).items():
            schemas.setdefault(name, _hoist_defs(sub, schemas))
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = "#/components/schemas/" + value.removeprefix("#/$defs/")
            else:
                out[key] = _hoist_defs(value, schemas)
        return out
    if isinstance(node, list):
        return [_hoist_defs(item, schemas) for item in node]
    return node


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document for `app`, built once and cached on it (FastAPI's own convention)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
    )
    components = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    doc["paths"] = _hoist_defs(doc.get("paths", {}), schemas)
    components["schemas"] = _hoist_defs(schemas, schemas)
    schemas = components["schemas"]
    openai_error = _add_schema(schemas, OpenAIError)
    anthropic_error = _add_schema(schemas, AnthropicError)
    components.setdefault("securitySchemes", {}).update(
        {
            "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
            "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "Anthropic clients"},
        }
    )
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            body_model = REQUEST_BODIES.get((method, path))
            if body_model is not None:
                content = {"application/json": {"schema": {"$ref": _add_schema(schemas, body_model)}}}
                operation["requestBody"] = {"required": True, "content": content}
            if path in PUBLIC_PATHS:
                operation["security"] = []
                continue
            # A route that declares its own scheme (the admin API's key) keeps it; the rest take a tenant's key.
            operation.setdefault("security", [{"bearer": []}, {"x-api-key": []}])
            error = anthropic_error if path.startswith("/v1/messages") else openai_error
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation status: the gateway answers 400
            for status, description in ERROR_STATUSES.items():
                entry = responses.setdefault(status, {"description": description})
                entry["content"] = {"application/json": {"schema": {"$ref": error}}}
    for name in ("HTTPValidationError", "ValidationError"):
        if not _referenced(doc, f"#/components/schemas/{name}"):
            schemas.pop(name, None)
    app.openapi_schema = doc
    return doc


def _referenced(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_referenced(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_referenced(v, ref) for v in node)
    return False


def install_openapi(app: FastAPI) -> None:
    """Serve `build_openapi`'s document at `/openapi.json` (and so in `/docs`)."""
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
