"""/v1/admin: tenants and their API keys, for the holder of the admin key (config ADMIN_KEY).

A key is shown once, in the answer that creates it; only its SHA-256 is stored. Revoking
(DELETE) is immediate: the next request with the key is a 401.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from flask import Blueprint, Response, request
from sqlalchemy.exc import IntegrityError

from service.api.common import json_response
from service.auth import admin, issue_key
from service.db import get_session
from service.errors import ApiError, not_found
from service.models import ApiKey, Tenant, utcnow
from service.pagination import page
from service.params import json_object
from service.schemas import validate
from service.serialize import api_key_json, tenant_json

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


@bp.post("/tenants")
@admin
def create_tenant() -> Response:
    body = json_object()
    validate("TenantCreate", body)
    session = get_session()
    tenant = Tenant(name=body["name"], created_at=utcnow())
    try:
        session.add(tenant)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, "tenant_exists", f"a tenant named {body['name']!r} exists") from None
    return json_response(tenant_json(tenant), 201, f"/v1/admin/tenants/{tenant.id}")


@bp.get("/tenants")
@admin
def list_tenants() -> Response:
    stmt = sa.select(Tenant)
    name = request.args.get("name")
    if name is not None:
        stmt = stmt.where(Tenant.name == name)
    keys = (Tenant.created_at, Tenant.id)
    return json_response(page(get_session(), stmt, keys, tenant_json, descending=True))


@bp.get("/tenants/<uuid:tenant_id>")
@admin
def get_tenant(tenant_id: uuid.UUID) -> Response:
    return json_response(tenant_json(_tenant(tenant_id)))


@bp.post("/tenants/<uuid:tenant_id>/keys")
@admin
def create_key(tenant_id: uuid.UUID) -> Response:
    """A new key for the tenant, shown in this answer only. The body is optional."""
    body = json_object() if request.get_data(cache=True) else {}
    validate("ApiKeyCreate", body)
    tenant = _tenant(tenant_id)
    session = get_session()
    row, key = issue_key(session, tenant, body.get("name"))
    session.commit()
    return json_response(api_key_json(row, key), 201, f"/v1/admin/keys/{row.id}")


@bp.get("/tenants/<uuid:tenant_id>/keys")
@admin
def list_keys(tenant_id: uuid.UUID) -> Response:
    tenant = _tenant(tenant_id)
    stmt = sa.select(ApiKey).where(ApiKey.tenant_id == tenant.id)
    keys = (ApiKey.created_at, ApiKey.id)
    return json_response(page(get_session(), stmt, keys, api_key_json, descending=True))


@bp.get("/keys/<uuid:key_id>")
@admin
def get_key(key_id: uuid.UUID) -> Response:
    return json_response(api_key_json(_key(key_id)))


@bp.delete("/keys/<uuid:key_id>")
@admin
def revoke_key(key_id: uuid.UUID) -> Response:
    """Revoke: the key stops working within API_KEY_CACHE_SECONDS (service/auth.py).
    Revoking a revoked key changes nothing."""
    session = get_session()
    row = _key(key_id)
    session.execute(
        sa.update(ApiKey).where(ApiKey.id == row.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    return Response(status=204)


def _tenant(tenant_id: uuid.UUID) -> Tenant:
    tenant = get_session().get(Tenant, str(tenant_id))
    if tenant is None:
        raise not_found("tenant", str(tenant_id))
    return tenant


def _key(key_id: uuid.UUID) -> ApiKey:
    row = get_session().get(ApiKey, str(key_id))
    if row is None:
        raise not_found("API key", str(key_id))
    return row
