"""/v1/sweeps: submit a grid or random search, follow it, cancel it, promote its best run.

The children are made, all of them, when the sweep is submitted: each child's body (the base
spec with its parameters' values put in) is checked by the schema of POST /v1/runs and built
and limited as a run is (runs.planner), so a bad path, or a value that makes an invalid run,
is a 422 naming the parameter and the value (`parameters['training.optimizer.learning_rate'][2]`)
before anything is stored. service/sweeps.py has the rest: holding and releasing the
children, settling the sweep, ASHA.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from flask import Blueprint, Response, current_app

from service import idempotency, limits, schemas, sweeps
from service.api.common import fetch, json_response, select_owned
from service.api.models import NAME as MODEL_NAME
from service.api.models import point
from service.api.runs import _publish, _thinned_after, planner
from service.auth import tenant_id
from service.db import get_session
from service.errors import ApiError, validation_error, validation_errors
from service.models import Run, Sweep, new_id, utcnow
from service.pagination import decode_cursor, encode_cursor, page, page_limit, request_cursor
from service.params import json_object, parse_uuid
from service.schemas import errors_for, validate
from service.serialize import model_json

bp = Blueprint("sweeps", __name__, url_prefix="/v1/sweeps")
# openapi.yaml's bound on a sweep's children (max_runs, and a grid's size).
MAX_RUNS: int = schemas.spec()["components"]["schemas"]["SweepCreate"]["properties"][
    "max_runs"]["maximum"]


@bp.post("")
@idempotency.idempotent
def create() -> Response:
    body = json_object()
    validate("SweepCreate", body)
    dataset_id = parse_uuid(body["dataset_id"], "dataset_id")
    method = body.get("method", "grid")
    parameters: dict[str, Any] = body["parameters"]
    steps = _paths(parameters, method)
    if method == "random" and body.get("max_runs") is None:
        raise validation_error("max_runs", "a random sweep needs max_runs: how many runs to "
                                           "draw")
    try:
        combos = sweeps.combinations(parameters, method, body.get("max_runs"), body.get("seed"),
                                     MAX_RUNS)
    except sweeps.SweepError as e:
        raise validation_error(e.path, e.message) from None
    base = {"dataset_id": body["dataset_id"], "network": body["network"],
            "training": body.get("training") or {}}
    session = get_session()
    plan = planner(session, dataset_id)
    defaults = _built(plan, base)
    tags = body.get("tags") or {}
    early = body.get("early_stopping")
    if early is not None:  # stored with its default filled in, as the runs' specs are
        early = {"reduction_factor": 3, **early}
    now = utcnow()
    sweep = Sweep(id=new_id(), tenant_id=tenant_id(), name=body.get("name"), tags=tags,
                  created_at=now, dataset_id=dataset_id, spec=base, parameters=parameters,
                  method=method, max_concurrent=body.get("max_concurrent", 1),
                  seed=body.get("seed"), metric=body.get("metric", "val_loss"),
                  goal=body.get("goal", "minimize"), early_stopping=early,
                  runs_total=len(combos), cancel_requested=False)
    children = []
    for combo in combos:
        child = copy.deepcopy(base)
        for name, choice in combo.items():
            try:
                sweeps.set_path(child, steps[name], copy.deepcopy(choice.value), defaults)
            except ValueError as e:
                raise validation_error(f"parameters['{name}']",
                                       f"is not a place in the base spec: {e}") from None
        built, _estimate = _checked(plan, child, combo)
        children.append(Run(
            id=new_id(), tenant_id=sweep.tenant_id, created_at=now, dataset_id=dataset_id,
            status="pending", network=built.network, training=built.training,
            name=sweep.name, tags=tags, epochs_total=built.epochs_total,
            stats_thinned_after=_thinned_after(built), sweep_id=sweep.id,
            sweep_parameters={name: choice.value for name, choice in combo.items()}))
    _check_metric(sweep, children)
    try:
        session.add(sweep)
        session.flush()
        session.add_all(children)
        session.flush()
        released = sweeps.release(session, sweep.id,
                                  int(current_app.config["TENANT_MAX_ACTIVE_RUNS"]))
        limits.check_stored_bytes(session, sweep.tenant_id, current_app.config)
        response = json_response(sweeps.sweep_json(session, sweep), 202,
                                 f"/v1/sweeps/{sweep.id}")
        replay = idempotency.commit(session, response)
    except ApiError:
        session.rollback()
        raise
    if replay is not None:
        return replay
    for run_id in released:
        _publish(run_id)
    return response


def _paths(parameters: dict[str, Any], method: str) -> dict[str, list[str | int]]:
    """Each parameter's parsed path; 422 at parameters['path'] for a bad path, or for a
    value the method cannot use (a grid needs lists; a random sweep lists or
    distributions)."""
    steps = {}
    for name, values in parameters.items():
        where = f"parameters['{name}']"
        try:
            steps[name] = sweeps.parse_path(name)
        except ValueError as e:
            raise validation_error(where, f"is not a path into the run spec: {e}") from None
        if method == "grid":
            if not isinstance(values, list):
                raise validation_error(where, "a grid sweep takes a list of values; "
                                              "distributions are for method random")
        else:
            try:
                sweeps.check_distribution(name, values)
            except sweeps.SweepError as e:
                raise validation_error(e.path, e.message) from None
    return steps


def _built(plan: Any, base: dict[str, Any]) -> dict[str, Any] | None:
    """The base spec as built (every default filled in), where a parameter's path finds the
    objects the base leaves out; None when the base alone is no valid run (its children may
    still be: a parameter may replace what is wrong in it)."""
    try:
        built, _estimate = plan(base)
    except ApiError as e:
        if e.status != 422:
            raise
        return None
    return {"network": built.network, "training": built.training}


def _checked(plan: Any, child: dict[str, Any], combo: dict[str, sweeps.Choice]) -> Any:
    """The child's plan, or a 422 naming the parameter (and its value) that made it invalid:
    the one whose path the run's error is at, inside or around; else every one of them."""
    try:
        set_errors = errors_for("RunCreate", child)
        if set_errors:
            raise validation_errors(set_errors)
        return plan(child)
    except ApiError as e:
        if e.status != 422:
            raise
        inner = (e.errors or [{"path": "", "message": e.detail}])[0]
        blamed = [n for n in combo if _related(n, inner["path"])] or list(combo)
        values = ", ".join(f"{n} = {combo[n].value!r}" for n in combo)
        raise validation_errors([
            {"path": sweeps.choice_path(n, combo[n]),
             "message": f"{combo[n].value!r} makes an invalid run ({values}): "
                        f"{inner['path'] + ': ' if inner['path'] else ''}{inner['message']}"}
            for n in blamed]) from None


def _related(parameter: str, path: str) -> bool:
    """Is the error at `path` about the value at `parameter` (the same place, inside it, or
    a place that holds it)?"""
    if not path:
        return False
    inner, outer = (path, parameter) if len(path) >= len(parameter) else (parameter, path)
    return inner == outer or inner.startswith(outer + ".") or inner.startswith(outer + "[")


def _check_metric(sweep: Sweep, children: list[Run]) -> None:
    """A validation metric needs a validation split in every child."""
    if not sweep.metric.startswith("val_"):
        return
    for run in children:
        if not run.training.get("validation_fraction"):
            raise validation_error("metric", f"{sweep.metric} needs a validation split: set "
                                             f"training.validation_fraction, or use "
                                             f"{sweep.metric.replace('val_', 'train_')}")


@bp.get("")
def list_() -> Response:
    session = get_session()
    keys = (Sweep.created_at, Sweep.id)
    return json_response(page(session, select_owned(Sweep), keys,
                              lambda s: sweeps.sweep_json(session, s), descending=True))


def _fetch(sweep_id: uuid.UUID) -> Sweep:
    return fetch(get_session(), Sweep, sweep_id, "sweep")


@bp.get("/<uuid:sweep_id>")
def get(sweep_id: uuid.UUID) -> Response:
    return json_response(sweeps.sweep_json(get_session(), _fetch(sweep_id)))


@bp.get("/<uuid:sweep_id>/leaderboard")
def leaderboard(sweep_id: uuid.UUID) -> Response:
    """The children best first (sweeps.ranked), paged: the cursor names the last run of a
    page, and the next page goes on after it in the order as it is now (a child finishing
    meanwhile may move up past it)."""
    session = get_session()
    sweep = _fetch(sweep_id)
    ranked = sweeps.ranked(session, sweep)
    start = 0
    cursor = request_cursor()
    if cursor:
        (after,) = decode_cursor(cursor, (Run.id,))
        ids = [r.id for r in ranked]
        if after not in ids:
            raise validation_error("query.cursor", "names no run of this sweep any more")
        start = ids.index(after) + 1
    limit = page_limit()
    rows = ranked[start:start + limit]
    more = start + limit < len(ranked)
    return json_response({
        "items": [sweeps.leaderboard_json(r, sweep, start + i + 1) for i, r in enumerate(rows)],
        "next_cursor": encode_cursor([rows[-1].id]) if more and rows else None})


@bp.post("/<uuid:sweep_id>/cancel")
def cancel(sweep_id: uuid.UUID) -> Response:
    """Cancel every child; idempotent (a finished sweep is returned as it is)."""
    session = get_session()
    sweep = _fetch(sweep_id)
    if sweep.finished_at is None:
        sweeps.cancel(session, sweep)
        session.commit()
        sweep = _fetch(sweep_id)
    return json_response(sweeps.sweep_json(session, sweep))


@bp.post("/<uuid:sweep_id>/promote")
def promote(sweep_id: uuid.UUID) -> Response:
    """Point the model alias `model` at the best child's weights (PUT /v1/models/{name}):
    201 when the alias is new, else 200; 409 `no_best_run` while no child has succeeded
    with a metric."""
    body = json_object()
    validate("SweepPromote", body)
    name = body["model"]
    if not MODEL_NAME.fullmatch(name):
        raise validation_error("model", "must be 1 to 200 letters, digits, '.', '_' or '-', "
                                        "starting with a letter or a digit")
    session = get_session()
    sweep = _fetch(sweep_id)
    best = sweeps.best_run(session, sweep)
    if best is None:
        raise ApiError(409, "no_best_run", f"sweep {sweep.id} has no succeeded child with a "
                       f"{sweep.metric} yet", status_now=sweeps.derived_status(
                           sweep, sweeps.counts(session, sweep.id)))
    alias, created = point(session, name, best.id, body.get("weights", "final"))
    if created:
        return json_response(model_json(alias), 201, f"/v1/models/{name}")
    return json_response(model_json(alias))
