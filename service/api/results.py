"""What a run produced: per-epoch rows, per-layer statistics, weights, predictions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from sqlalchemy.orm import defer
from sqlalchemy.sql.base import ExecutableOption

import nn
from service import artifacts, dataio
from service.api.common import fetch, json_response, run_artifact
from service.db import get_session
from service.errors import ApiError, validation_error
from service.models import Artifact, Dataset, Epoch, LayerStat, Run
from service.pagination import Key, cursor_prefix, downsample_filter, page, page_limit
from service.params import arg_choice, arg_int, json_object
from service.schemas import validate
from service.serialize import epoch_json, finite, layer_stat_json

bp = Blueprint("results", __name__, url_prefix="/v1/runs/<uuid:run_id>")

PHASES = ("pretrain", "train")
MAX_POINTS = 100_000
MAX_GRID = 100  # GET .../boundary: at most MAX_GRID x MAX_GRID points
GRID_MARGIN = 0.05  # the grid spans the data and this fraction of its range on each side
NPZ_TYPES = ("application/x-npz", "application/octet-stream")


@bp.get("/epochs")
def epochs(run_id: uuid.UUID) -> Response:
    keys = (Epoch.phase, Epoch.epoch)
    return _series(run_id, Epoch, keys, epoch_json, [])


@bp.get("/layer-stats")
def layer_stats(run_id: uuid.UUID) -> Response:
    """?detail=false leaves out each row's `params` and `grad_norm_by_time` (not read)."""
    keys = (LayerStat.phase, LayerStat.epoch, LayerStat.layer)
    layer = arg_int("layer", None, 0)
    detail = arg_choice("detail", ("true", "false"), "true") == "true"
    where = [] if layer is None else [LayerStat.layer == layer]
    load = [] if detail else [defer(LayerStat.params), defer(LayerStat.grad_norm_by_time)]
    return _series(run_id, LayerStat, keys, partial(layer_stat_json, detail=detail), where,
                   load)


def _series(
    run_id: uuid.UUID,
    entity: type[Epoch] | type[LayerStat],
    keys: Sequence[Key],
    serialize: Callable[[Any], dict[str, Any]],
    where: list[sa.ColumnElement[bool]],
    load: Sequence[ExecutableOption] = (),
) -> Response:
    """One page of a run's (phase, epoch, ...) rows: ?phase, ?from_epoch, ?to_epoch,
    ?max_points (evenly spaced epochs per phase, first and last kept), ?limit, ?cursor."""
    session = get_session()
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
    stmt = sa.select(entity).where(*where).options(*load)
    if max_points is not None:
        groups = sa.select(entity.phase, entity.epoch).where(*where).distinct()
        after = cursor_prefix(keys, 2)
        stmt = stmt.where(
            downsample_filter(session, groups, max_points, entity.phase, entity.epoch, after, limit)
        )
    return json_response(page(session, stmt, keys, serialize, limit=limit))


@bp.get("/weights")
def weights(run_id: uuid.UUID) -> Response:
    """JSON {"layers": [...]} (the shape POST /v1/runs accepts as initial_weights), or the
    stored .npz bytes for ?format=npz or an Accept of application/x-npz / octet-stream."""
    which = arg_choice("which", artifacts.MODEL_KINDS, "final")
    media = _weights_media_type()
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    row = artifacts.artifact(session, run.id, which)
    if row is None:
        detail = f"run {run.id} has no {which} weights (it is {run.status})"
        raise ApiError(404, "weights_not_available", detail)
    if media != "application/json":
        resp = Response(row.data, mimetype=media)
        resp.headers["Content-Disposition"] = f'attachment; filename="run-{run.id}-{which}.npz"'
        return resp
    layers = nn.weights_to_json(artifacts.load(row).weights)["layers"]
    return json_response({"run_id": run.id, "which": which, "epoch": row.epoch, "layers": layers})


def _weights_media_type() -> str:
    fmt = arg_choice("format", ("json", "npz"))
    if fmt is not None:
        return "application/json" if fmt == "json" else NPZ_TYPES[0]
    if "Accept" not in request.headers:
        return "application/json"
    best = request.accept_mimetypes.best_match(("application/json", *NPZ_TYPES))
    if best is None:
        raise ApiError(
            406, "not_acceptable", "weights are served as application/json or application/x-npz"
        )
    return best


@bp.post("/predict")
def predict(run_id: uuid.UUID) -> Response:
    """Outputs (and for classifiers labels and probabilities) from stored weights, computed
    here without the queue. One query when the model is cached (the run's status and the
    artifact's identity, scoped to the tenant: a deleted run or another tenant's is a 404
    at once), a second one to load it when not."""
    body = json_object()
    validate("PredictRequest", body)
    max_rows = int(current_app.config["PREDICT_MAX_ROWS"])
    if len(body["inputs"]) > max_rows:
        raise validation_error("inputs", f"must have at most {max_rows} rows")
    inputs = dataio.tensor(body["inputs"], "inputs")
    which = body.get("which", "final")
    status, epoch, created_at = run_artifact(run_id, which)
    found = None if epoch is None else artifacts.model(str(run_id), which, epoch, created_at)
    if found is None:
        raise ApiError(
            409, "run_not_ready", f"run {run_id} has no {which} weights yet (it is {status})",
            status_now=status,
        )
    epoch, model = found
    try:
        result = model.predict(inputs)
    except nn.SpecError as e:
        raise validation_error(e.path, e.message) from None
    return json_response({"run_id": str(run_id), "which": which, "epoch": epoch, **result})


@bp.get("/boundary")
def boundary(run_id: uuid.UUID) -> Response:
    """The network's answer over a grid spanning the data, as the Playground draws it: for
    data of two features, from the newest weights stored (the final ones once there are,
    else the last checkpoint's), with the rows of the validation split."""
    size = arg_int("size", 40, 2, MAX_GRID)
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    dataset = fetch(session, Dataset, run.dataset_id, "data set")
    if dataset.input_shape != [2]:
        raise ApiError(409, "boundary_not_available", f"the data set's samples have the shape "
                       f"{dataset.input_shape}; a boundary is drawn for two features")
    row = artifacts.artifact(session, run.id, "final") or artifacts.artifact(
        session, run.id, "checkpoint")
    if row is None:
        raise ApiError(404, "weights_not_available",
                       f"run {run.id} has no weights yet (it is {run.status})")
    key = ("boundary", run.id, row.kind, row.epoch, row.created_at, size)
    cache = current_app.extensions["model_cache"]
    grid = cache.get(key, lambda: _grid(run, dataset, row, size))
    return json_response(grid)


def _grid(run: Run, dataset: Dataset, row: Artifact, size: int) -> dict[str, Any]:
    inputs, targets = dataio.decode(dataset.data)
    plan = nn.build(run.network, run.training, nn.describe(inputs, targets, dataset.task))
    checkpoint = row.kind == "checkpoint"
    snapshot = nn.snapshot(plan, inputs, targets, row.data if checkpoint else None)
    model = snapshot.model or artifacts.load(row)
    lo, hi = inputs.min(axis=0), inputs.max(axis=0)
    pad = np.where(hi > lo, (hi - lo) * GRID_MARGIN, 1.0)
    lo, hi = lo - pad, hi + pad
    xs, ys = np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size)
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row by row, y rising
    answer = model.predict(points)
    labels = None
    if "probabilities" in answer:
        p = np.asarray(answer["probabilities"])
        values = p[:, 1] if p.shape[1] == 2 else p.max(axis=1)
        labels = p.argmax(axis=1).reshape(size, size).tolist()
    else:
        values = np.asarray(answer["outputs"])[:, 0]
    return {"run_id": run.id, "weights": row.kind, "phase": row.phase, "epoch": row.epoch,
            "size": size, "x": [float(lo[0]), float(hi[0])], "y": [float(lo[1]), float(hi[1])],
            "values": finite(values.reshape(size, size).tolist()), "labels": labels,
            "classes": dataset.classes, "validation": snapshot.validation.tolist()}
