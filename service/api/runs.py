"""/v1/runs: create (validate, store, enqueue), list, describe, update, cancel, delete.

Status changes made here are compare-and-set UPDATEs (`... WHERE id = :id AND status =
:old`), so they can never overwrite a worker's concurrent claim or finish.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

import nn
from service import artifacts, dataio, idempotency, limits, offload, schemas, statstore
from service.api.common import fetch, find, json_response, owned, select_owned
from service.auth import tenant_id
from service.db import get_session
from service.errors import ApiError, not_found, validation_error
from service.models import (
    ACTIVE_STATUSES,
    RUN_STATUSES,
    Artifact,
    Dataset,
    ModelAlias,
    Run,
    new_id,
    utcnow,
)
from service.pagination import page
from service.params import (
    arg_choices,
    arg_datetime,
    arg_int,
    arg_text,
    arg_uuid,
    json_object,
    parse_uuid,
)
from service.schemas import validate
from service.serialize import FINISHED_STATUSES, run_json
from service.webhooks import emit_run

log = logging.getLogger(__name__)
bp = Blueprint("runs", __name__, url_prefix="/v1/runs")
# GET /v1/runs/{id}?wait=: how often the status is read. A finished run is answered within
# this; a read is one indexed row, so a few waiting clients cost the database next to nothing.
WAIT_POLL_SECONDS = 0.25
_SCHEMAS = schemas.spec()["components"]["schemas"]
# A run's name and tags, as openapi.yaml has them.
NAME_MAX_LENGTH: int = _SCHEMAS["RunName"]["maxLength"]
TAG_KEY = re.compile(_SCHEMAS["TagKey"]["pattern"])
TAG_KEY_MAX_LENGTH: int = _SCHEMAS["TagKey"]["maxLength"]
TAG_VALUE_MAX_LENGTH: int = _SCHEMAS["TagValue"]["maxLength"]
MAX_TAGS: int = _SCHEMAS["Tags"]["maxProperties"]


@bp.post("")
@idempotency.idempotent
def create() -> Response:
    body = json_object()
    # Before the schema (which says it too, as "must be null"), to say it plainly.
    if body.get("init_from_run") is not None and body.get("initial_weights") is not None:
        raise validation_error("initial_weights", "give init_from_run or initial_weights, not both")
    validate("RunCreate", body)
    dataset_id = parse_uuid(body["dataset_id"], "dataset_id")
    source_id = None
    if body.get("init_from_run") is not None:
        source_id = parse_uuid(body["init_from_run"], "init_from_run")
    session = get_session()
    plan, estimate = _plan(session, dataset_id, body)
    weights = _initial_weights(session, body, plan, source_id)
    run = Run(
        id=new_id(),
        tenant_id=tenant_id(),
        created_at=utcnow(),
        dataset_id=dataset_id,
        status="queued",
        network=plan.network,
        training=plan.training,
        init_from_run_id=source_id,
        name=body.get("name"),
        tags=body.get("tags") or {},
        epochs_total=plan.epochs_total,
        stats_thinned_after=_thinned_after(plan),
    )
    try:
        session.add(run)
        session.flush()  # the run row before its artifact (foreign key)
        limits.check_active_runs(session, run.tenant_id, current_app.config)
        if weights is not None:
            data = nn.Model(plan.network, weights, nn.model_meta(plan)).to_npz()
            session.add(Artifact(run_id=run.id, kind="initial", epoch=0, data=data))
            session.flush()
        limits.check_stored_bytes(session, run.tenant_id, current_app.config)
        created = {**run_json(run), "estimate": {"memory_bytes": estimate.memory_bytes,
                                                 "multiply_adds": estimate.multiply_adds,
                                                 "seconds": round(estimate.seconds, 3)}}
        response = json_response(created, 202, f"/v1/runs/{run.id}")
        replay = idempotency.commit(session, response)
    except IntegrityError:  # the data set was deleted since _plan read it
        session.rollback()
        raise validation_error("dataset_id", "no data set with this id") from None
    except ApiError:
        session.rollback()
        raise
    if replay is not None:
        return replay
    _publish(run.id)
    return response


@bp.get("")
def list_() -> Response:
    stmt = select_owned(Run)
    statuses = arg_choices("status", RUN_STATUSES)
    if statuses:
        stmt = stmt.where(Run.status.in_(statuses))
    dataset_id = arg_uuid("dataset_id")
    if dataset_id:
        stmt = stmt.where(Run.dataset_id == dataset_id)
    sweep_id = arg_uuid("sweep_id")
    if sweep_id:
        stmt = stmt.where(Run.sweep_id == sweep_id)
    name = arg_text("name", NAME_MAX_LENGTH)
    if name is not None:
        stmt = stmt.where(Run.name == name)
    for key, value in _tag_filters():
        stmt = stmt.where(Run.tags[key].as_string() == value)
    after, before = arg_datetime("created_after"), arg_datetime("created_before")
    if after is not None:
        stmt = stmt.where(Run.created_at >= after)
    if before is not None:
        stmt = stmt.where(Run.created_at < before)
    keys = (Run.created_at, Run.id)
    return json_response(page(get_session(), stmt, keys, run_json, descending=True))


@bp.get("/<uuid:run_id>")
def get(run_id: uuid.UUID) -> Response:
    """?wait=SECONDS: answer once the run is finished or the time has passed (a long poll)."""
    wait = arg_int("wait", 0, 0, int(current_app.config["RUN_WAIT_MAX_SECONDS"]))
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    if wait and run.status not in FINISHED_STATUSES:
        _wait_finished(session, run.id, time.monotonic() + wait)
        run = fetch(session, Run, run_id, "run")
    return json_response(run_json(run))


def _wait_finished(session: Session, ident: str, deadline: float) -> None:
    """Until the run is finished (or gone) or the monotonic deadline: its status read every
    WAIT_POLL_SECONDS, each time in a short transaction; while sleeping the session holds no
    connection, so waiting clients cannot exhaust the pool or keep a snapshot open."""
    while True:
        session.close()  # ends the transaction and returns the connection to the pool
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(WAIT_POLL_SECONDS, left))
        status = session.scalar(sa.select(Run.status).where(owned(Run), Run.id == ident))
        if status is None or status in FINISHED_STATUSES:
            return


def _tag_filters() -> list[tuple[str, str]]:
    """?tag=key:value, repeatable: (key, value) pairs, every one of which a run must have.
    The spec's pattern for tag keys (no colon, no quote) keeps them plain in a JSON path."""
    pairs = []
    for raw in request.args.getlist("tag"):
        key, colon, value = raw.partition(":")
        if not (colon and TAG_KEY.fullmatch(key) and 1 <= len(key) <= TAG_KEY_MAX_LENGTH
                and len(value) <= TAG_VALUE_MAX_LENGTH):
            raise validation_error(
                "query.tag", f"must be key:value (e.g. team:search) with a key of 1 to "
                f"{TAG_KEY_MAX_LENGTH} characters matching {TAG_KEY.pattern} and a value of "
                f"at most {TAG_VALUE_MAX_LENGTH}")
        pairs.append((key, value))
    return pairs


@bp.patch("/<uuid:run_id>")
def update(run_id: uuid.UUID) -> Response:
    """Sets the fields the body names (RunUpdate: each is the run's column of that name),
    whatever the run's status; `tags` is merged into the run's (a null value removes its
    key; `"tags": null` removes them all)."""
    body = json_object()
    validate("RunUpdate", body)
    session = get_session()
    values = {k: v for k, v in body.items() if k != "tags"}
    # The first UPDATE locks the row (PostgreSQL) or the database (SQLite) until the commit,
    # so the tags read next are the latest and no concurrent PATCH's merge is lost.
    done = session.execute(
        sa.update(Run).where(owned(Run), Run.id == str(run_id))
        .values(**values, tags=Run.tags),
        execution_options={"synchronize_session": False},
    )
    if done.rowcount == 0:
        raise not_found("run", str(run_id))
    if "tags" in body:
        ident = str(run_id)
        old = session.scalar(sa.select(Run.tags).where(owned(Run), Run.id == ident))
        session.execute(sa.update(Run).where(owned(Run), Run.id == ident)
                        .values(tags=_merged_tags(old, body["tags"])),
                        execution_options={"synchronize_session": False})
    session.commit()
    return json_response(run_json(fetch(session, Run, run_id, "run")))


def _merged_tags(tags: dict[str, str], change: dict[str, str | None] | None) -> dict[str, str]:
    """A JSON merge patch (RFC 7396) of the tags; 422 at `tags` past MAX_TAGS."""
    if change is None:
        return {}
    merged = {**tags, **change}
    merged = {k: v for k, v in merged.items() if v is not None}
    if len(merged) > MAX_TAGS:
        raise validation_error("tags", f"the run would have {len(merged)} tags; at most "
                               f"{MAX_TAGS} are allowed: remove some (a null value)")
    return merged


@bp.delete("/<uuid:run_id>")
def delete(run_id: uuid.UUID) -> Response:
    """Deletes the run with its epochs, statistics and weights; 409 while it is active, or
    while a model alias points at it (`run_aliased`, naming the aliases)."""
    session = get_session()
    _not_aliased(session, str(run_id))
    try:
        done = session.execute(sa.delete(Run).where(owned(Run), Run.id == str(run_id),
                                                    Run.status.not_in(ACTIVE_STATUSES)))
    except IntegrityError:  # an alias was made meanwhile (its foreign key is RESTRICT)
        session.rollback()
        _not_aliased(session, str(run_id))
        raise ApiError(409, "conflict", f"run {run_id} changed while it was deleted; try "
                                        "again") from None
    if done.rowcount == 0:
        run = fetch(session, Run, run_id, "run")
        detail = f"run {run.id} is {run.status}; cancel it and wait until it is cancelled"
        raise ApiError(409, "run_active", detail, status_now=run.status)
    session.commit()
    return Response(status=204)


def _not_aliased(session: Session, ident: str) -> None:
    """A 409 `run_aliased` naming the tenant's aliases that point at the run."""
    names = session.scalars(sa.select(ModelAlias.name).where(
        owned(ModelAlias), ModelAlias.run_id == ident).order_by(ModelAlias.name)).all()
    if names:
        listed = ", ".join(names)
        raise ApiError(409, "run_aliased", f"run {ident} is what the model alias "
                       f"{listed} points at; point it elsewhere (PUT /v1/models/{names[0]}) "
                       f"or delete it first", models=list(names))


@bp.post("/<uuid:run_id>/cancel")
def cancel(run_id: uuid.UUID) -> Response:
    """pending (a sweep's held child) or queued -> cancelled at once (with its run.cancelled
    event); running -> cancelling (the worker stops and finishes it).

    Idempotent: cancelling or cancelled runs are returned as they are. 409 when finished.
    """
    session = get_session()
    ident = str(run_id)
    now = utcnow()
    moves = (
        ("pending", {"status": "cancelled", "cancel_requested": True, "finished_at": now}),
        ("queued", {"status": "cancelled", "cancel_requested": True, "finished_at": now}),
        ("running", {"status": "cancelling", "cancel_requested": True}),
    )
    for _attempt in range(3):  # the status may move between our reads; try again
        for old, values in moves:
            done = session.execute(
                sa.update(Run).where(owned(Run), Run.id == ident, Run.status == old)
                .values(**values),
                execution_options={"synchronize_session": False},
            )
            if done.rowcount:
                run = _reload(session, ident)
                if run.status == "cancelled":
                    emit_run(session, run)  # its event commits with it
                session.commit()
                return json_response(run_json(run))
        run = _reload(session, ident)
        if run is None:
            raise not_found("run", ident)
        if run.status in ("cancelling", "cancelled"):
            return json_response(run_json(run))
        if run.status in FINISHED_STATUSES:
            detail = f"run {ident} already {run.status}"
            raise ApiError(409, "run_finished", detail, status_now=run.status)
    raise ApiError(409, "conflict", f"run {ident} changed state while cancelling; try again")


def _reload(session: Session, ident: str) -> Run | None:
    return find(session, Run, ident)


# ---- creation ------------------------------------------------------------------------------

def _plan(session: Session, dataset_id: str, body: dict[str, Any]
          ) -> tuple[nn.Plan, nn.budget.Estimate]:
    """Build the plan against the data set and estimate it: every spec error and every limit
    passed is a 422 naming its field."""
    return planner(session, dataset_id)(body)


def planner(session: Session, dataset_id: str
            ) -> Callable[[dict[str, Any]], tuple[nn.Plan, nn.budget.Estimate]]:
    """`_plan` for any number of run bodies on one data set (a sweep's children): the data
    set is read (a 422 at dataset_id without one) and decoded once."""
    dataset = find(session, Dataset, dataset_id, undefer(Dataset.data))
    if dataset is None:
        raise validation_error("dataset_id", "no data set with this id")
    data, task, stored = dataset.data, dataset.task, dataset.size_bytes
    described: list[nn.DataInfo] = []

    def plan(body: dict[str, Any]) -> tuple[nn.Plan, nn.budget.Estimate]:
        def build() -> nn.Plan:
            if not described:
                inputs, targets = dataio.decode(data)
                described.append(nn.describe(inputs, targets, task))
            return _spec_errors(nn.build, body["network"], body.get("training") or {},
                                described[0])

        built = offload.run(build, size=len(data))
        return built, limits.check_plan(built, stored, current_app.config)

    return plan


def _thinned_after(plan: nn.Plan) -> int | None:
    """The run's statistics thinning, fixed now: each phase keeps at most
    RUN_MAX_STATS_EPOCHS statistics epochs (service/statstore.py)."""
    if not plan.training["stats"]:
        return None
    epochs = max(plan.epochs_total, plan.pretrain_epochs_total)
    return statstore.thinned_after(epochs, int(current_app.config["RUN_MAX_STATS_EPOCHS"]))


def _initial_weights(
    session: Session, body: dict[str, Any], plan: nn.Plan, source_id: str | None
) -> nn.Weights | None:
    """Inline initial_weights, or the final weights of init_from_run, checked against the plan."""
    if body.get("initial_weights") is not None:
        inline = {"layers": body["initial_weights"]["layers"]}  # run_id, which, epoch: ignored
        return offload.run(_spec_errors, nn.weights_from_json, inline, plan,
                           path="initial_weights", size=len(request.get_data(cache=True)))
    if source_id is None:
        return None
    source = find(session, Run, source_id)
    row = artifacts.artifact(session, source_id, "final") if source is not None else None
    found = None if row is None else artifacts.model(source_id, "final", row.epoch,
                                                     row.created_at)
    if found is None:
        source = find(session, Run, source_id)  # again: it may have been deleted meanwhile
        why = "no run with this id" if source is None else (
            f"run {source_id} has no final weights (it is {source.status})"
        )
        raise validation_error("init_from_run", why)
    as_json = nn.weights_to_json(found[1].weights)
    return _spec_errors(nn.weights_from_json, as_json, plan, path="init_from_run")


def _spec_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the engine; SpecError -> 422 at its path. Any other ValueError/TypeError is an
    engine gap on odd input: logged, and still a 422 rather than a 500."""
    try:
        return fn(*args, **kwargs)
    except nn.SpecError as e:
        raise validation_error(e.path, e.message) from None
    except (ValueError, TypeError, OverflowError, KeyError) as e:
        log.warning("the engine failed on a spec it should have refused", exc_info=True)
        raise validation_error("", f"the spec could not be built: {e}") from None


def _publish(run_id: str) -> None:
    """Wake a worker. The run is committed first, so a lost message only delays it: the
    reconciler republishes queued runs."""
    try:
        from service import queue

        queue.publish_run(run_id)
    except Exception:  # noqa: BLE001 - the broker being down must not fail the request
        log.warning(
            "could not publish run %s; the reconciler will republish it", run_id, exc_info=True
        )
