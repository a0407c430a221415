"""Who is calling: tenants, their API keys, the admin key, and the check before every request.

Every request except the public ones (`@public`: /healthz, /readyz, the spec) carries a key,
as `Authorization: Bearer <key>` or `X-API-Key: <key>`:

- a tenant's API key: the request acts as that tenant (`tenant_id()`); every data set and
  run it can see is its own (service/api/common.py scopes every query);
- the admin key (config ADMIN_KEY), only for the `@admin` endpoints under /v1/admin, which
  manage tenants and keys. A tenant key there is a 403 `admin_only` (it is a valid key that
  may not do this; the admin endpoints are documented, so 403 reveals nothing). Without
  ADMIN_KEY (None or empty) no key opens them.

A missing, unknown or revoked key is a 401 `unauthorized` with `WWW-Authenticate: Bearer`.
Each API process remembers a valid key's tenant for API_KEY_CACHE_SECONDS (default 5), so a
revoked key stops working within that time (at once with 0); unknown keys are not remembered.

An API key is `bp_` + 43 URL-safe characters (256 random bits). Only its SHA-256 is stored:
a slow password hash buys nothing for a key nobody can guess, and a fast one lets every
request be checked with one indexed lookup. The key itself is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask, current_app, g, request
from sqlalchemy.orm import Session

from service.cache import LRUCache
from service.db import read_row
from service.errors import ApiError
from service.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "bp_"
SHOWN_PREFIX = 11  # "bp_" + 8 characters: enough to tell keys apart, useless to guess one
KEY_CACHE_SIZE = 10_000  # valid keys remembered per process
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

F = TypeVar("F", bound=Callable[..., Any])


# ---- keys -------------------------------------------------------------------------------

def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def issue_key(session: Session, tenant: Tenant, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for `tenant`: the row (added to the session) and the key, which is stored
    nowhere and must be shown to its owner now."""
    key = new_key()
    row = ApiKey(tenant_id=tenant.id, key_sha256=key_sha256(key), prefix=key[:SHOWN_PREFIX],
                 name=name, created_at=utcnow())
    session.add(row)
    return row, key


def _active(digest: str) -> sa.ColumnElement[bool]:
    return sa.and_(ApiKey.key_sha256 == digest, ApiKey.revoked_at.is_(None))


def find_key(session: Session, key: str) -> ApiKey | None:
    """The active (not revoked) key row for a presented key."""
    return session.scalars(sa.select(ApiKey).where(_active(key_sha256(key)))).one_or_none()


def tenant_named(session: Session, name: str, *, create: bool = False) -> Tenant | None:
    tenant = session.scalars(sa.select(Tenant).where(Tenant.name == name)).one_or_none()
    if tenant is None and create:
        tenant = Tenant(name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


# ---- the request hook -------------------------------------------------------------------

def public(view: F) -> F:
    """Mark a view as answering without a key."""
    view.auth = "public"  # type: ignore[attr-defined]
    return view


def admin(view: F) -> F:
    """Mark a view as answering only to the admin key."""
    view.auth = "admin"  # type: ignore[attr-defined]
    return view


def tenant_id() -> str:
    """The calling tenant's id (set by `authenticate` for every tenant endpoint)."""
    return g.tenant_id


def init_app(app: Flask) -> None:
    app.extensions["key_cache"] = LRUCache(KEY_CACHE_SIZE,
                                           ttl=float(app.config["API_KEY_CACHE_SECONDS"]))
    app.before_request(authenticate)


def authenticate() -> None:
    """Before every request: who is calling, and may they call this endpoint?

    Tenant endpoints are the default, so a new view is never public by accident. Unrouted
    requests pass through to their 404 / 405."""
    if request.url_rule is None or request.endpoint is None:
        return
    view = current_app.view_functions[request.endpoint]
    kind = getattr(view, "auth", "tenant")
    if kind == "public":
        return
    key = _presented_key()
    if key is None:
        raise _unauthorized("no API key: send Authorization: Bearer <key>", invalid=False)
    is_admin = _is_admin_key(key)
    if kind == "admin":
        if is_admin:
            return
        if _active_key(key) is not None:
            raise ApiError(403, "admin_only", "this endpoint needs the admin key, not a tenant's")
        raise _unauthorized("the key is not valid", invalid=True)
    found = _active_key(key)
    if found is None:
        detail = ("the admin key manages tenants under /v1/admin; use a tenant's API key here"
                  if is_admin else "the API key is not valid (unknown or revoked)")
        raise _unauthorized(detail, invalid=True)
    g.tenant_id, g.api_key_id = found


def _presented_key() -> str | None:
    """The key the request carries; "" for credentials that cannot be a key (another
    Authorization scheme, say a proxy's Basic); None when it carries none at all."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    value = request.headers.get("X-API-Key")
    if value is not None:
        return value.strip()
    return "" if header is not None else None


def _is_admin_key(key: str) -> bool:
    admin_key = current_app.config.get("ADMIN_KEY")
    if not admin_key or not key:
        return False
    return hmac.compare_digest(key_sha256(key), key_sha256(admin_key))


def _active_key(key: str) -> tuple[str, str] | None:
    """(tenant id, key id) of an active key: from the process's key cache, else looked up
    in one autocommit query of its own, so the request's session starts (and holds a
    connection) only when the view needs it, not while a large body is still arriving."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    digest = key_sha256(key)
    cache: LRUCache = current_app.extensions["key_cache"]
    found = cache.lookup(digest)
    if found is None:
        row = read_row(sa.select(ApiKey.tenant_id, ApiKey.id).where(_active(digest)))
        found = None if row is None else cache.put(digest, tuple(row))
    return found


def _unauthorized(detail: str, *, invalid: bool) -> ApiError:
    challenge = 'Bearer realm="backprop"' + (', error="invalid_token"' if invalid else "")
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})
