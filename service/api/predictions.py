"""/v1/predictions: batch prediction jobs over a data set (service/predictions.py has the
result's form; worker/predictions.py runs them).

A job is made from a run's weights (`run_id`, `weights`) or from a model alias (`model`,
pinned to the alias's run and version when the job is made), checked against the data set
(its samples must be what the model takes) and against the tenant's quota (its result's
estimated bytes), committed, then published, as a run is. Its status changes made here are
compare-and-set UPDATEs, as a run's (service/api/runs.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request, stream_with_context
from sqlalchemy.exc import IntegrityError

import nn
from service import artifacts, idempotency, limits, predictions
from service.api.common import fetch, find, find_model, json_response, owned, select_owned
from service.auth import tenant_id
from service.db import get_session, read_row
from service.errors import ApiError, validation_error
from service.models import (
    ACTIVE_STATUSES,
    RUN_STATUSES,
    Dataset,
    Prediction,
    PredictionChunk,
    Run,
    new_id,
    utcnow,
)
from service.pagination import page
from service.params import arg_choice, arg_choices, json_object, parse_uuid
from service.schemas import validate
from service.serialize import FINISHED_STATUSES, prediction_json
from service.webhooks import emit_status

log = logging.getLogger(__name__)
bp = Blueprint("predictions", __name__, url_prefix="/v1/predictions")

FORMATS = {"json": "application/json", "npz": predictions.NPZ_TYPE,
           "csv": predictions.CSV_TYPE}


@bp.post("")
@idempotency.idempotent
def create() -> Response:
    body = json_object()
    # Before the schema, which refuses the same (if/then/else) but names no field.
    if ("run_id" in body) == ("model" in body):
        raise validation_error("run_id" if "run_id" in body else "",
                               "give run_id or model, one of them")
    if "model" in body and "weights" in body:
        raise validation_error("weights", "a model serves the weights it points at; give "
                                          "weights with run_id only")
    validate("PredictionCreate", body)
    session = get_session()
    run_id, weights, model, version = _source(session, body)
    dataset_id = parse_uuid(body["dataset_id"], "dataset_id")
    dataset = find(session, Dataset, dataset_id)
    if dataset is None:
        raise validation_error("dataset_id", "no data set with this id")
    row = artifacts.artifact(session, run_id, weights)
    found = None if row is None else artifacts.model(run_id, weights, row.epoch, row.created_at)
    if found is None:
        raise validation_error("model" if model else "weights",
                               f"run {run_id} has no {weights} weights")
    loaded = found[1]
    if loaded.meta.get("task") == "seq2seq":
        # A job's result is fixed-shape arrays per row (outputs, CSV columns output_<j>);
        # decoded sequences have lengths of their own and decoding takes its own settings.
        raise validation_error("model" if model else "run_id", f"run {run_id} is a seq2seq "
                               "model: batch prediction jobs answer fixed-shape outputs; "
                               f"decode with POST /v1/runs/{run_id}/predict")
    _check_shape(dataset, loaded)
    job = Prediction(id=new_id(), tenant_id=tenant_id(), dataset_id=dataset.id, run_id=run_id,
                     weights=weights, model=model, model_version=version, status="queued",
                     rows_total=dataset.n_samples, rows_done=0, result_bytes=0,
                     chunk_rows=predictions.chunk_rows(loaded, current_app.config),
                     classes=loaded.meta["classes"], created_at=utcnow())
    try:
        session.add(job)
        session.flush()
        limits.check_stored_bytes(session, job.tenant_id, current_app.config,
                                  coming=predictions.result_bytes(loaded, job.rows_total))
        response = json_response(prediction_json(job), 202, f"/v1/predictions/{job.id}")
        replay = idempotency.commit(session, response)
    except IntegrityError:  # the data set was deleted since it was read
        session.rollback()
        raise validation_error("dataset_id", "no data set with this id") from None
    except ApiError:
        session.rollback()
        raise
    if replay is not None:
        return replay
    _publish(job.id)
    return response


def _source(session: sa.orm.Session, body: dict) -> tuple[str, str, str | None, int | None]:
    """(run_id, weights, model, model_version) the job predicts with."""
    if "model" in body:
        alias = find_model(session, body["model"])
        if alias is None:
            raise validation_error("model", "no model with this name")
        return alias.run_id, alias.weights, alias.name, alias.version
    run_id = parse_uuid(body["run_id"], "run_id")
    if find(session, Run, run_id) is None:
        raise validation_error("run_id", "no run with this id")
    return run_id, body.get("weights", "final"), None, None


def _check_shape(dataset: Dataset, model: nn.Model) -> None:
    """The data set's samples must be what the model takes (a sequence of single features
    may leave out its trailing axis of 1, as predict's inputs may)."""
    takes = list(model.meta["input_shape"])
    if dataset.input_shape != takes and dataset.input_shape + [1] != takes:
        raise validation_error("dataset_id", f"the data set's samples have the shape "
                                             f"{dataset.input_shape}; the model takes {takes}")


def _publish(prediction_id: str) -> None:
    """Wake a worker; a lost message only delays the job (the reconciler republishes it)."""
    try:
        from service import queue

        queue.publish_prediction(prediction_id)
    except Exception:  # noqa: BLE001 - the broker being down must not fail the request
        log.warning("could not publish prediction %s; the reconciler will republish it",
                    prediction_id, exc_info=True)


@bp.get("")
def list_() -> Response:
    stmt = select_owned(Prediction)
    statuses = arg_choices("status", RUN_STATUSES)
    if statuses:
        stmt = stmt.where(Prediction.status.in_(statuses))
    keys = (Prediction.created_at, Prediction.id)
    return json_response(page(get_session(), stmt, keys, prediction_json, descending=True))


@bp.get("/<uuid:prediction_id>")
def get(prediction_id: uuid.UUID) -> Response:
    return json_response(prediction_json(fetch(get_session(), Prediction, prediction_id,
                                               "prediction")))


@bp.post("/<uuid:prediction_id>/cancel")
def cancel(prediction_id: uuid.UUID) -> Response:
    """queued -> cancelled at once (with its event); running -> cancelling (the worker
    stops at its next chunk). Idempotent; 409 once finished otherwise."""
    session = get_session()
    ident = str(prediction_id)
    moves = (
        ("queued", {"status": "cancelled", "cancel_requested": True, "finished_at": utcnow()}),
        ("running", {"status": "cancelling", "cancel_requested": True}),
    )
    for _attempt in range(3):  # the status may move between our reads; try again
        for old, values in moves:
            done = session.execute(
                sa.update(Prediction).where(owned(Prediction), Prediction.id == ident,
                                            Prediction.status == old).values(**values),
                execution_options={"synchronize_session": False},
            )
            if done.rowcount:
                job = fetch(session, Prediction, ident, "prediction")
                if job.status == "cancelled":
                    emit_status(session, job)  # its event commits with it
                session.commit()
                return json_response(prediction_json(job))
        job = fetch(session, Prediction, ident, "prediction")
        if job.status in ("cancelling", "cancelled"):
            return json_response(prediction_json(job))
        if job.status in FINISHED_STATUSES:
            raise ApiError(409, "prediction_finished", f"prediction {ident} already "
                           f"{job.status}", status_now=job.status)
    raise ApiError(409, "conflict", f"prediction {ident} changed state while cancelling; "
                                    "try again")


@bp.delete("/<uuid:prediction_id>")
def delete(prediction_id: uuid.UUID) -> Response:
    """Deletes the job with its stored result; 409 while it is active."""
    session = get_session()
    done = session.execute(sa.delete(Prediction).where(owned(Prediction),
                                                       Prediction.id == str(prediction_id),
                                                       Prediction.status.not_in(ACTIVE_STATUSES)))
    if done.rowcount == 0:
        job = fetch(session, Prediction, prediction_id, "prediction")
        raise ApiError(409, "prediction_active", f"prediction {job.id} is {job.status}; "
                       "cancel it and wait until it is cancelled", status_now=job.status)
    session.commit()
    return Response(status=204)


@bp.get("/<uuid:prediction_id>/result")
def result(prediction_id: uuid.UUID) -> Response:
    """The result of a succeeded job, streamed from its chunks read one at a time: JSON up
    to PREDICT_MAX_ROWS rows, .npz or CSV whatever its size."""
    session = get_session()
    job = fetch(session, Prediction, prediction_id, "prediction")
    if job.status != "succeeded":
        raise ApiError(409, "prediction_not_ready", f"prediction {job.id} is {job.status}; "
                       "its result is there once it has succeeded", status_now=job.status)
    media = _result_media_type()
    most = int(current_app.config["PREDICT_MAX_ROWS"])
    if media == "application/json" and job.rows_total > most:
        raise ApiError(406, "result_too_large", f"the result has {job.rows_total} rows; a JSON "
                       f"answer holds at most {most} (PREDICT_MAX_ROWS): ask for "
                       f"{predictions.NPZ_TYPE} or {predictions.CSV_TYPE} (Accept, or "
                       "?format=npz or csv), which any size streams as", rows=job.rows_total,
                       limit=most)
    n_chunks = -(-job.rows_total // job.chunk_rows)
    chunks = _chunks(job.id, n_chunks)
    if media == "application/json":
        body = predictions.json_stream(chunks, job.classes)
    elif media == predictions.CSV_TYPE:
        body = predictions.csv_stream(chunks, job.classes)
    else:
        body = predictions.npz_stream(chunks, job.classes, job.rows_total)
    session.close()  # the stream reads each chunk on a connection of its own
    resp = Response(stream_with_context(body), mimetype=media)
    if media != "application/json":
        ext = "npz" if media == predictions.NPZ_TYPE else "csv"
        resp.headers["Content-Disposition"] = \
            f'attachment; filename="prediction-{job.id}.{ext}"'
    return resp


def _chunks(prediction_id: str, n_chunks: int) -> predictions.Chunks:
    """The job's chunks in order, each read (one autocommit query) as it is needed. A job
    deleted while its result streams ends the stream early."""
    query = sa.select(PredictionChunk.data).where(
        PredictionChunk.prediction_id == sa.bindparam("id"),
        PredictionChunk.chunk == sa.bindparam("chunk"))

    def read() -> Iterator[predictions.Chunk]:
        for chunk in range(n_chunks):
            row = read_row(query, {"id": prediction_id, "chunk": chunk})
            if row is None:
                log.warning("prediction %s: chunk %d is gone (deleted meanwhile)",
                            prediction_id, chunk)
                return
            yield predictions.decode_chunk(row.data)

    return read


def _result_media_type() -> str:
    fmt = arg_choice("format", tuple(FORMATS))
    if fmt is not None:
        return FORMATS[fmt]
    if "Accept" not in request.headers:
        return "application/json"
    best = request.accept_mimetypes.best_match(tuple(FORMATS.values()))
    if best is None:
        raise ApiError(406, "not_acceptable", "a result is served as application/json, "
                       f"{predictions.NPZ_TYPE} or {predictions.CSV_TYPE}")
    return best
