"""Small helpers the blueprints share, and the one place that scopes queries to a tenant.

Every query of data sets, runs, sweeps, webhooks, model aliases and batch predictions a tenant
endpoint makes carries `owned(Model)` (lists, updates, deletes) or goes through `fetch` (one
row by id; an alias by its name: `find_model`, `model_artifact`). Epochs, statistics and
artifacts are reached only through a run fetched so, or joined to it (`run_artifact`);
webhook deliveries only through their webhook, a prediction's chunks through it. Another
tenant's id is therefore a plain 404, exactly like an id that does not exist: whether it
exists is not revealed.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Response, jsonify
from sqlalchemy.orm import Session

from service.auth import tenant_id
from service.db import read_row
from service.errors import ApiError, not_found
from service.models import Artifact, Dataset, ModelAlias, Prediction, Run, Sweep, Webhook

T = TypeVar("T", Dataset, Run, Webhook, ModelAlias, Prediction, Sweep)


def owned(model: type[Dataset] | type[Run] | type[Webhook] | type[ModelAlias] | type[Prediction]
          | type[Sweep]) -> sa.ColumnElement[bool]:
    """The WHERE clause limiting `model`'s rows to the calling tenant's."""
    return model.tenant_id == tenant_id()


def select_owned(model: type[T], *options: Any) -> sa.Select[tuple[T]]:
    """SELECT the calling tenant's rows of `model`."""
    return sa.select(model).where(owned(model)).options(*options)


def find(session: Session, model: type[T], ident: uuid.UUID | str, *options: Any) -> T | None:
    """The calling tenant's row with this id, or None (also for another tenant's row)."""
    stmt = select_owned(model, *options).where(model.id == str(ident))
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def fetch(session: Session, model: type[T], ident: uuid.UUID | str, what: str) -> T:
    """The calling tenant's row with this id, or a 404 problem naming `what`."""
    row = find(session, model, ident)
    if row is None:
        raise not_found(what, str(ident))
    return row


def run_artifact(run_id: uuid.UUID | str, kind: str) -> sa.Row[Any]:
    """(status, epoch, created_at) of the calling tenant's run and of its `kind` artifact
    (None, None without one), in one autocommit query outside the request's session: the
    predict endpoint's only query when its model is cached. A 404 without such a run."""
    params = {"tenant_id": tenant_id(), "run_id": str(run_id), "kind": kind}
    found = read_row(_run_artifact_query(), params)
    if found is None:
        raise not_found("run", str(run_id))
    return found


@functools.cache
def _run_artifact_query() -> sa.Select[tuple[str, int, Any]]:
    """Built once, its values (the tenant's id among them, as `owned` would) bound per call:
    building a statement and its cache key costs more than running it (~0.15 ms)."""
    return (
        sa.select(Run.status, Artifact.epoch, Artifact.created_at)
        .outerjoin(Artifact, sa.and_(Artifact.run_id == Run.id,
                                     Artifact.kind == sa.bindparam("kind")))
        .where(Run.tenant_id == sa.bindparam("tenant_id"), Run.id == sa.bindparam("run_id"))
    )


def find_model(session: Session, name: str) -> ModelAlias | None:
    """The calling tenant's model alias of this name, or None."""
    return session.get(ModelAlias, (tenant_id(), name), populate_existing=True)


def fetch_model(session: Session, name: str) -> ModelAlias:
    """The calling tenant's model alias of this name, or a 404 problem."""
    alias = find_model(session, name)
    if alias is None:
        raise ApiError(404, "not_found", f"no model named {name}")
    return alias


def model_artifact(name: str) -> sa.Row[Any]:
    """(run_id, weights, version, status, epoch, created_at) of the calling tenant's alias
    `name`, of the run it points at and of that run's artifact (epoch and created_at None
    without one), in one autocommit query outside the request's session, as run_artifact:
    read on every prediction, so that a PUT is followed at once by every API process. A 404
    without such an alias."""
    found = read_row(_model_artifact_query(), {"tenant_id": tenant_id(), "name": name})
    if found is None:
        raise ApiError(404, "not_found", f"no model named {name}")
    return found


@functools.cache
def _model_artifact_query() -> sa.Select[Any]:
    return (
        sa.select(ModelAlias.run_id, ModelAlias.weights, ModelAlias.version, Run.status,
                  Artifact.epoch, Artifact.created_at)
        .join(Run, Run.id == ModelAlias.run_id)
        .outerjoin(Artifact, sa.and_(Artifact.run_id == Run.id,
                                     Artifact.kind == ModelAlias.weights))
        .where(ModelAlias.tenant_id == sa.bindparam("tenant_id"),
               ModelAlias.name == sa.bindparam("name"))
    )


def json_response(body: Any, status: int = 200, location: str | None = None) -> Response:
    resp = jsonify(body)
    resp.status_code = status
    if location is not None:
        resp.headers["Location"] = location
    return resp
