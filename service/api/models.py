"""/v1/models: a tenant's names for runs' weights (aliases), their versions, and predictions
through them.

A PUT points a name at a run's `final` or `best` weights and records the next version; a
PUT of an earlier run is a roll-back. Predicting through a name reads the alias with the run's
weights in one query (`model_artifact`) on every request and loads the model from the
per-process cache by the artifact's identity, so every API process follows a PUT from its
commit on, without any message between them.

An alias keeps its run: the run's foreign key is RESTRICT, DELETE /v1/runs/{id} answers 409
`run_aliased` naming the aliases, and retention skips it (worker/retention.py).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from flask import Blueprint, Response
from sqlalchemy.exc import IntegrityError

from service import artifacts
from service.api.common import (
    fetch_model,
    find,
    find_model,
    json_response,
    model_artifact,
    owned,
    select_owned,
)
from service.api.results import predict_answer, predict_body
from service.auth import tenant_id
from service.db import get_session
from service.errors import ApiError, validation_error
from service.models import ModelAlias, ModelVersion, Run, utcnow
from service.pagination import page
from service.params import json_object, parse_uuid
from service.schemas import validate
from service.serialize import model_json, model_version_json

bp = Blueprint("models", __name__, url_prefix="/v1/models")

# openapi.yaml's ModelName: the same rule, so a name in a URL never needs escaping.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# A PUT that loses a race for the next version number (another PUT of the same name
# committed it first) reads the alias again and tries again, this many times at most.
PUT_ATTEMPTS = 3


@bp.get("")
def list_() -> Response:
    return json_response(page(get_session(), select_owned(ModelAlias), (ModelAlias.name,),
                              model_json))


@bp.put("/<name>")
def put(name: str) -> Response:
    """Point `name` at the run's weights: 201 with a new alias, 200 when it moved (a new
    version) or already pointed there (no new version: a PUT may be repeated)."""
    if not NAME.fullmatch(name):
        raise validation_error("path.name", "must be 1 to 200 letters, digits, '.', '_' or "
                                            "'-', starting with a letter or a digit")
    body = json_object()
    validate("ModelPut", body)
    run_id = parse_uuid(body["run_id"], "run_id")
    alias, created = point(get_session(), name, run_id, body.get("weights", "final"))
    if created:
        return json_response(model_json(alias), 201, f"/v1/models/{name}")
    return json_response(model_json(alias))


def point(session: sa.orm.Session, name: str, run_id: str, weights: str
          ) -> tuple[ModelAlias, bool]:
    """Point the calling tenant's alias `name` at the run's weights, committed: the alias,
    and whether it was made now. A new version only when it moved (a PUT may be repeated);
    a 422 naming run_id or weights when the run has no such weights."""
    for _attempt in range(PUT_ATTEMPTS):
        _check_weights(session, run_id, weights)
        alias = find_model(session, name)
        if alias is not None and (alias.run_id, alias.weights) == (run_id, weights):
            return alias, False
        now = utcnow()
        created = alias is None
        if alias is None:
            alias = ModelAlias(tenant_id=tenant_id(), name=name, created_at=now, version=0)
            session.add(alias)
        alias.run_id, alias.weights, alias.updated_at = run_id, weights, now
        alias.version += 1
        session.add(ModelVersion(tenant_id=alias.tenant_id, name=name, version=alias.version,
                                 run_id=run_id, weights=weights, created_at=now))
        try:
            session.commit()
        except IntegrityError:  # another PUT took this version, or the run was deleted
            session.rollback()
            continue
        return alias, created
    raise ApiError(409, "conflict", f"model {name} changed while this PUT was made; try again")


def _check_weights(session: sa.orm.Session, run_id: str, weights: str) -> None:
    """A 422 naming the field unless the run is the tenant's and has these weights."""
    run = find(session, Run, run_id)
    if run is None:
        raise validation_error("run_id", "no run with this id")
    if artifacts.artifact(session, run.id, weights) is None:
        raise validation_error("weights", f"run {run.id} has no {weights} weights (it is "
                                          f"{run.status})")


@bp.get("/<name>")
def get(name: str) -> Response:
    return json_response(model_json(fetch_model(get_session(), name)))


@bp.get("/<name>/versions")
def versions(name: str) -> Response:
    """Every version of the alias, newest first."""
    session = get_session()
    alias = fetch_model(session, name)
    stmt = sa.select(ModelVersion).where(ModelVersion.tenant_id == alias.tenant_id,
                                         ModelVersion.name == alias.name)
    return json_response(page(session, stmt, (ModelVersion.version,), model_version_json,
                              descending=True))


@bp.delete("/<name>")
def delete(name: str) -> Response:
    """Deletes the alias and its versions; the runs stay (and may then be deleted)."""
    session = get_session()
    done = session.execute(sa.delete(ModelAlias).where(owned(ModelAlias),
                                                       ModelAlias.name == name))
    if done.rowcount == 0:
        fetch_model(session, name)  # the 404
    session.commit()
    return Response(status=204)


@bp.post("/<name>/predict")
def predict(name: str) -> Response:
    """POST /v1/runs/{run_id}/predict through the alias: the same body and the same answer,
    from the weights the alias points at when the request is read."""
    body = predict_body()
    row = model_artifact(name)
    if body.get("which", row.weights) != row.weights:
        raise validation_error("which", f"model {name} serves the {row.weights} weights of "
                                        f"run {row.run_id}; leave `which` out")
    found = None if row.epoch is None else artifacts.model(row.run_id, row.weights, row.epoch,
                                                           row.created_at)
    return predict_answer(row.run_id, row.weights, row.status, found, body)
