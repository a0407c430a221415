"""What a run produced: per-epoch rows, per-layer statistics, weights, predictions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from sqlalchemy.orm import Session

import nn
from service import artifacts, dataio, onnx_export, statstore
from service.api.common import fetch, json_response, run_artifact
from service.db import get_session
from service.errors import ApiError, size, validation_error
from service.models import Epoch, EpochStats, Run
from service.pagination import (
    Key,
    cursor_prefix,
    decode_cursor,
    downsample_filter,
    encode_cursor,
    page,
    page_limit,
    request_cursor,
)
from service.params import arg_choice, arg_int, json_object
from service.schemas import validate
from service.serialize import epoch_json

bp = Blueprint("results", __name__, url_prefix="/v1/runs/<uuid:run_id>")

PHASES = ("pretrain", "train")
MAX_POINTS = 100_000
NPZ_TYPES = ("application/x-npz", "application/octet-stream")
# What one number of a prediction's answer costs while it is written: a Python float in a list
# (32 bytes) and its JSON text as a str and as bytes (about 2 x 20); measured about 74.
ANSWER_BYTES_PER_VALUE = 80

# The last sort key of a layer-stats cursor: a layer within its stored epoch.
LAYER_KEY = sa.column("layer", sa.Integer())


@bp.get("/epochs")
def epochs(run_id: uuid.UUID) -> Response:
    keys = (Epoch.phase, Epoch.epoch)
    session = get_session()
    where, limit = _series(session, run_id, Epoch, keys, [])
    stmt = sa.select(Epoch).where(*where)
    return json_response(page(session, stmt, keys, epoch_json, limit=limit))


@bp.get("/layer-stats")
def layer_stats(run_id: uuid.UUID) -> Response:
    """A page of layer rows, unpacked from the stored epochs (one row per epoch holds every
    layer: service/statstore.py). ?layer keeps the epochs holding that layer, then the
    layer's rows; ?detail=false leaves out each row's `params` and `grad_norm_by_time`."""
    keys = (EpochStats.phase, EpochStats.epoch, LAYER_KEY)
    layer = arg_int("layer", None, 0)
    detail = arg_choice("detail", ("true", "false"), "true") == "true"
    where = [] if layer is None else [statstore.has_layer(EpochStats.layout, layer)]
    session = get_session()
    where, limit = _series(session, run_id, EpochStats, keys, where)
    cursor = request_cursor()
    after = decode_cursor(cursor, keys) if cursor else None
    if after is not None:
        where.append(sa.tuple_(EpochStats.phase, EpochStats.epoch) >= sa.tuple_(
            sa.literal(after[0]), sa.literal(after[1])))
    # The cursor's own epoch may have no row left; every later epoch has one at least.
    stored = session.scalars(sa.select(EpochStats).where(*where)
                             .order_by(EpochStats.phase, EpochStats.epoch).limit(limit + 2))
    rows = [row for stats in stored for row in statstore.rows(stats, detail)
            if (layer is None or row["layer"] == layer)
            and (after is None or (row["phase"], row["epoch"], row["layer"]) > after)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor([rows[-1]["phase"], rows[-1]["epoch"], rows[-1]["layer"]])
    return json_response({"items": rows, "next_cursor": next_cursor})


def _series(
    session: Session,
    run_id: uuid.UUID,
    entity: type[Epoch] | type[EpochStats],
    keys: Sequence[Key],
    where: list[sa.ColumnElement[bool]],
) -> tuple[list[sa.ColumnElement[bool]], int]:
    """The WHERE clause of a page of a run's (phase, epoch, ...) rows, and its size:
    ?phase, ?from_epoch, ?to_epoch, ?max_points (evenly spaced epochs per phase, first and
    last kept), ?limit (?cursor is the caller's)."""
    run = fetch(session, Run, run_id, "run")
    phase = arg_choice("phase", PHASES)
    first = arg_int("from_epoch", None, 0)
    last = arg_int("to_epoch", None, 0)
    if first is not None and last is not None and last < first:
        raise validation_error("query.to_epoch", "must be >= from_epoch")
    max_points = arg_int("max_points", None, 2, MAX_POINTS)
    limit = page_limit()
    where = [entity.run_id == run.id, *where]
    if phase is not None:
        where.append(entity.phase == phase)
    if first is not None:
        where.append(entity.epoch >= first)
    if last is not None:
        where.append(entity.epoch <= last)
    if max_points is not None:
        groups = sa.select(entity.phase, entity.epoch).where(*where).distinct()
        after = cursor_prefix(keys, 2)
        where.append(
            downsample_filter(session, groups, max_points, entity.phase, entity.epoch, after, limit)
        )
    return where, limit


@bp.get("/weights")
def weights(run_id: uuid.UUID) -> Response:
    """JSON {"layers": [...]} (the shape POST /v1/runs accepts as initial_weights), or the
    stored .npz bytes for ?format=npz or an Accept of application/x-npz / octet-stream, or
    the network as an ONNX model for ?format=onnx or Accept: application/onnx."""
    which = arg_choice("which", artifacts.MODEL_KINDS, "final")
    media = _weights_media_type()
    if media == onnx_export.MEDIA_TYPE:
        return _onnx(run_id, which)
    if media == "application/json":
        status, found = _stored_model(run_id, which)
        if found is None:
            raise _no_weights(str(run_id), which, status)
        layers = nn.weights_to_json(found[1].weights)["layers"]
        return json_response({"run_id": str(run_id), "which": which, "epoch": found[0],
                              "layers": layers})
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    row = artifacts.artifact(session, run.id, which, with_data=True)
    if row is None:
        raise _no_weights(run.id, which, fetch(session, Run, run_id, "run").status)
    resp = Response(row.data, mimetype=media)
    resp.headers["Content-Disposition"] = f'attachment; filename="run-{run.id}-{which}.npz"'
    return resp


def _onnx(run_id: uuid.UUID, which: str) -> Response:
    """The model as ONNX (service/onnx_export.py); 406 `not_exportable` naming the first
    layer that has no ONNX form."""
    status, found = _stored_model(run_id, which)
    if found is None:
        raise _no_weights(str(run_id), which, status)
    epoch, model = found
    try:
        proto = onnx_export.to_onnx(model, f"run {run_id} ({which} weights, epoch {epoch})")
    except onnx_export.NotExportable as e:
        raise ApiError(406, "not_exportable", f"{e}; ask for application/json or "
                                              "application/x-npz", layer=e.path) from None
    resp = Response(proto.SerializeToString(), mimetype=onnx_export.MEDIA_TYPE)
    resp.headers["Content-Disposition"] = f'attachment; filename="run-{run_id}-{which}.onnx"'
    return resp


def _no_weights(run_id: str, which: str, status: str) -> ApiError:
    return ApiError(404, "weights_not_available",
                    f"run {run_id} has no {which} weights (it is {status})")


def _stored_model(run_id: uuid.UUID, which: str) -> tuple[str, tuple[int, nn.Model] | None]:
    """The run's status and (epoch, Model) of its `which` weights, or None without them; a
    404 when there is no such run, also when it is deleted while its weights are read. One
    query when the model is cached (the run's status and the artifact's identity, scoped to
    the tenant), a second one to load it when not."""
    status, epoch, created_at = run_artifact(run_id, which)
    if epoch is None:
        return status, None
    found = artifacts.model(str(run_id), which, epoch, created_at)
    if found is None:  # gone since the first query: with the run (a 404 now), or replaced
        status, _, _ = run_artifact(run_id, which)
    return status, found


def _weights_media_type() -> str:
    fmt = arg_choice("format", ("json", "npz", "onnx"))
    if fmt is not None:
        return {"json": "application/json", "npz": NPZ_TYPES[0],
                "onnx": onnx_export.MEDIA_TYPE}[fmt]
    if "Accept" not in request.headers:
        return "application/json"
    best = request.accept_mimetypes.best_match(("application/json", *NPZ_TYPES,
                                                onnx_export.MEDIA_TYPE))
    if best is None:
        raise ApiError(
            406, "not_acceptable", "weights are served as application/json, application/x-npz "
                                   "or application/onnx"
        )
    return best


@bp.post("/predict")
def predict(run_id: uuid.UUID) -> Response:
    """Outputs (and for classifiers labels and probabilities) from stored weights, computed
    here without the queue (`_stored_model`: one query when the model is cached)."""
    body = json_object()
    config = current_app.config
    dataio.check_samples(body.get("inputs"), "inputs", int(config["PREDICT_MAX_ROWS"]),
                         int(config["DATASET_MAX_FEATURES"]))
    validate("PredictRequest", body)
    inputs = dataio.tensor(body["inputs"], "inputs")
    which = body.get("which", "final")
    status, found = _stored_model(run_id, which)
    if found is None:
        raise ApiError(
            409, "run_not_ready", f"run {run_id} has no {which} weights yet (it is {status})",
            status_now=status,
        )
    epoch, model = found
    batch_size = _batch_size(model, len(inputs), int(config["PREDICT_MAX_MEMORY_BYTES"]))
    try:
        result = model.predict(inputs, batch_size)
    except nn.SpecError as e:
        raise validation_error(e.path, e.message) from None
    return json_response({"run_id": str(run_id), "which": which, "epoch": epoch, **result})


def _batch_size(model: nn.Model, rows: int, limit: int) -> int:
    """How many samples to compute at once for the prediction to stay within `limit` bytes
    (PREDICT_MAX_MEMORY_BYTES) beside its answer; a 422 at `inputs`, before anything is
    allocated, when one sample or the answer alone would be over it."""
    per_sample = model.sample_bytes
    answer = rows * model.result_values * ANSWER_BYTES_PER_VALUE
    allowed = f"the limit is {size(limit)} (PREDICT_MAX_MEMORY_BYTES)"
    if per_sample > limit:
        raise validation_error("inputs", f"one sample of this model takes about "
                                         f"{size(per_sample)} to compute; {allowed}")
    if per_sample + answer > limit:
        fits = (limit - per_sample) // (model.result_values * ANSWER_BYTES_PER_VALUE)
        raise validation_error("inputs", f"the answer for {rows} rows would take about "
                                         f"{size(answer)}; {allowed}: send at most {fits} "
                                         f"rows at a time")
    return (limit - answer) // per_sample
