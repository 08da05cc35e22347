"""The served OpenAPI document is valid, every reference resolves, and each route states its body, errors and auth."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sparsegate.gateway.app import create_app
from sparsegate.gateway.openapi import REQUEST_BODIES
from sparsegate.gateway.settings import Settings, hash_api_key


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = Settings(
        tenants=[{"name": "acme", "api_keys": [hash_api_key("k")], "models": ["*"]}],
        pools=[{"name": "p", "model": "m", "max_context": 4096, "workers": ["http://w:1"]}],
    )
    app = create_app(settings)
    doc: dict[str, Any] = app.openapi()
    return doc


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    found = refs(document)
    assert found, "the document should use references"
    resolver = Registry().with_resource("urn:doc", Resource(document, DRAFT202012)).resolver("urn:doc")
    for ref in set(found):
        assert ref.startswith("#/components/"), ref
        assert resolver.lookup(ref).contents is not None, ref
    assert not any("$defs" in r for r in found)


def test_every_route_has_its_body_errors_and_auth(document: dict[str, Any]) -> None:
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert set(REQUEST_BODIES) <= documented, set(REQUEST_BODIES) - documented
    assert ("get", "/v1/responses/{response_id}") in documented
    assert ("post", "/v1/responses/{response_id}/cancel") in documented
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["x-api-key"]["name"] == "x-api-key"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if (method, path) in REQUEST_BODIES:
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                assert schema["$ref"].startswith("#/components/schemas/"), path
            if path.startswith("/health/"):
                assert operation["security"] == []
                continue
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearer": []}, {"x-api-key": []}], path
            else:  # the admin API and /metrics take the admin key
                assert operation["security"] == [{"AdminKey": []}], path
            responses = operation["responses"]
            assert "422" not in responses, path
            for status in ("400", "401", "404", "429", "503"):
                error_ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
                want = "AnthropicError" if path.startswith("/v1/messages") else "OpenAIError"
                assert error_ref.endswith(want), (path, status)


def test_chat_body_schema_names_its_nested_models(document: dict[str, Any]) -> None:
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert "StreamOptions" in str(chat) and "StreamOptions" in document["components"]["schemas"]


async def test_docs_and_document_are_served() -> None:
    settings = Settings(
        tenants=[{"name": "acme", "api_keys": [hash_api_key("k")], "models": ["*"]}],
        pools=[{"name": "p", "model": "m", "max_context": 4096, "workers": ["http://w:1"]}],
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        served = await client.get("/openapi.json")
        assert served.status_code == 200 and "components" in served.json()
        assert (await client.get("/docs")).status_code == 200
