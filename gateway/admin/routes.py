"""`/admin/v1/*`: tenants, keys and usage, behind an admin key (`admin.api_keys` in the config, hashed).

Routes raise; errors reach the client in OpenAI's envelope like every other route's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from sparsegate.gateway.admin.model import TenantSpec
from sparsegate.gateway.admin.service import Admin
from sparsegate.gateway.errors import InvalidRequest
from sparsegate.gateway.ledger.export import to_csv, to_jsonl
from sparsegate.gateway.settings import Budgets

# Declared for OpenAPI (/docs shows the lock and the scheme); the check itself is Admin.check_admin.
admin_bearer = HTTPBearer(
    scheme_name="AdminKey",
    description="An admin key (`admin.api_keys` in the config, stored hashed).",
    auto_error=False,
)


def admin_of(request: Request) -> Admin:
    admin = request.app.state.admin
    assert isinstance(admin, Admin)
    return admin


def require_admin(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(admin_bearer)]
) -> Admin:
    admin = admin_of(request)
    admin.check_admin(request.headers)
    return admin


AdminDep = Annotated[Admin, Depends(admin_of)]
admin_api = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(require_admin)])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyRequest(_Body):
    budgets: Budgets = Budgets()
    expires_in_s: float | None = Field(default=None, gt=0, description="the key stops working after this long")


class RotateRequest(_Body):
    overlap_s: float = Field(default=3600.0, ge=0, description="how long the old key keeps working")


@admin_api.post("/tenants")
async def put_tenant(spec: TenantSpec, admin: AdminDep) -> dict[str, Any]:
    """Create a tenant, or update the one of that name (a tenant from the YAML seed is overridden, keys kept)."""
    return await admin.put_tenant(spec)


@admin_api.get("/tenants")
async def list_tenants(admin: AdminDep) -> dict[str, Any]:
    """Every tenant the gateway serves now: the seed's and the API's, as they take effect."""
    return {"object": "list", "data": admin.list_tenants()}


@admin_api.post("/tenants/{name}/keys")
async def create_key(name: str, admin: AdminDep, body: KeyRequest | None = None) -> dict[str, Any]:
    """A new key for the tenant. The plain key is in this answer only; the gateway keeps its hash."""
    body = body or KeyRequest()
    return await admin.create_key(name, body.budgets, body.expires_in_s)


@admin_api.get("/tenants/{name}/keys")
async def list_keys(name: str, admin: AdminDep) -> dict[str, Any]:
    """The tenant's active keys: id, prefix, creation time (never the key or its hash)."""
    return {"object": "list", "data": admin.list_keys(name)}


@admin_api.delete("/keys/{key_id}")
async def revoke_key(key_id: str, admin: AdminDep) -> dict[str, Any]:
    """Revoke a key at once, on every replica (within a second with Redis)."""
    return await admin.revoke(key_id)


@admin_api.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: str, admin: AdminDep, body: RotateRequest | None = None) -> dict[str, Any]:
    """A new key for the same tenant; the old one keeps working for `overlap_s` seconds, then stops."""
    return await admin.rotate(key_id, (body or RotateRequest()).overlap_s)


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds, or ISO 8601 (a date, or a date and time; UTC when it has no offset)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{name}={value!r} is neither unix seconds nor an ISO 8601 date or time.", param=name
        ) from None
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()


@admin_api.get(
    "/usage",
    response_class=PlainTextResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
async def usage(
    request: Request,
    admin: AdminDep,
    tenant: str | None = None,
    since: str | None = None,
    until: str | None = None,
    format: Literal["jsonl", "csv"] | None = None,
) -> Response:
    """The usage ledger for a tenant (all when unset) and a time range [since, until): one JSON line per finished
    request, or CSV with `format=csv` or `Accept: text/csv`. Spend is added when the price table names the model."""
    if admin.ledger is None:
        raise InvalidRequest("The usage ledger is disabled on this gateway (ledger.enabled: false).")
    start, end = parse_time(since, "since"), parse_time(until, "until")
    records = await admin.ledger.records(tenant, start, end)
    as_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
    if as_csv:
        return Response(to_csv(records, admin.ledger.prices), media_type="text/csv")
    return Response(to_jsonl(records, admin.ledger.prices), media_type="application/x-ndjson")
