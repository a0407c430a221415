"""Liveness, readiness, and the contract itself: the endpoints that need no key."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, Response, json, request

from service import db
from service.api.common import json_response
from service.auth import public
from service.errors import problem
from service.schemas import spec, spec_text

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)
# The spec's media types: RFC 9512's first (the default), then the older one that tools
# which read only text/* as text understand.
YAML_TYPES = ("application/yaml", "text/yaml")


@bp.get("/healthz")
@public
def healthz() -> Response:
    """The process answers: nothing else is checked."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
@public
def readyz() -> Response:
    """The database answers SELECT 1 and the broker accepts connections."""
    checks = {"database": _check(_database_ok), "broker": _check(_broker_ok)}
    if all(v == "ok" for v in checks.values()):
        return json_response({"status": "ok", "checks": checks})
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem(503, "not_ready", f"not ready: {failed} unavailable", checks=checks)


def _check(probe) -> str:  # noqa: ANN001 - a callable returning bool
    try:
        return "ok" if probe() else "unavailable"
    except Exception as e:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness check %s failed", probe.__name__, exc_info=True)
        return f"error: {type(e).__name__}"


def _database_ok() -> bool:
    with db.engine().connect() as conn:
        return conn.execute(sa.text("SELECT 1")).scalar() == 1


def _broker_ok() -> bool:
    from service import queue

    return bool(queue.broker_ok())


@bp.get("/v1/openapi.yaml")
@public
def openapi_yaml() -> Response:
    media = request.accept_mimetypes.best_match(YAML_TYPES) or YAML_TYPES[0]
    return Response(spec_text(), mimetype=media)


@bp.get("/v1/openapi.json")
@public
def openapi_json() -> Response:
    return Response(json.dumps(spec()), mimetype="application/json")
