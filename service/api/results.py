"""What a run produced: per-epoch rows, per-layer statistics, weights, predictions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from sqlalchemy.orm import Session, defer
from sqlalchemy.sql.base import ExecutableOption

import nn
from service import artifacts, dataio
from service.api.common import fetch, json_response, run_artifact
from service.db import get_session
from service.errors import ApiError, validation_error
from service.models import Dataset, Epoch, LayerStat, Run
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
    stored .npz bytes for ?format=npz or an Accept of application/x-npz / octet-stream.
    which=latest: the newest weights as JSON, whatever they are (`_latest`)."""
    which = arg_choice("which", (*artifacts.MODEL_KINDS, "latest"), "final")
    media = _weights_media_type()
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    if which == "latest":
        if media != "application/json":
            raise ApiError(406, "not_acceptable", "which=latest is served as JSON")
        newest = _latest(session, run)
        layers = nn.weights_to_json(newest.model.weights)["layers"]
        return json_response({"run_id": run.id, "which": newest.kind, "epoch": newest.epoch,
                              "layers": layers})
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
    data of two features, from the newest weights (`_latest`), with the rows of the
    validation split."""
    size = arg_int("size", 40, 2, MAX_GRID)
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    dataset = fetch(session, Dataset, run.dataset_id, "data set")
    if dataset.input_shape != [2]:
        raise ApiError(409, "boundary_not_available", f"the data set's samples have the shape "
                       f"{dataset.input_shape}; a boundary is drawn for two features")
    newest = _latest(session, run)
    key = ("boundary", newest.key, size)
    return json_response(current_app.extensions["model_cache"].get(
        key, lambda: _grid(newest, run, dataset, size)))


class _Latest(NamedTuple):
    kind: str  # final, checkpoint or initial
    phase: str
    epoch: int
    model: nn.Model
    validation: np.ndarray  # the validation split's rows
    low: np.ndarray  # each feature's least and greatest value in the data
    high: np.ndarray
    key: tuple[Any, ...]  # the weights' identity, for caches


def _latest(session: Session, run: Run) -> _Latest:
    """The newest weights of the run: the final ones once there are, else its last
    checkpoint's (stored about every CHECKPOINT_SECONDS while it trains), else the initial
    ones (given, or drawn from the seed, as training draws them); with what training makes
    of the data (read and prepared once per weights)."""
    row = next((r for r in (artifacts.artifact(session, run.id, k)
                            for k in ("final", "checkpoint", "initial")) if r is not None), None)
    key = ("latest", run.id) + (("seed",) if row is None else (row.kind, row.epoch,
                                                                row.created_at))

    def load() -> _Latest:
        dataset = fetch(session, Dataset, run.dataset_id, "data set")
        inputs, targets = dataio.decode(dataset.data)
        plan = nn.build(run.network, run.training, nn.describe(inputs, targets, dataset.task))
        state = row.data if row is not None and row.kind == "checkpoint" else None
        found = nn.snapshot(plan, inputs, targets, state)
        model = artifacts.load(row) if row is not None and state is None else found.model
        kind, phase, epoch = ("initial", "train", 0) if row is None else (
            row.kind, row.phase, row.epoch)
        return _Latest(kind, phase, epoch, model, found.validation, inputs.min(axis=0),
                       inputs.max(axis=0), key)

    return current_app.extensions["model_cache"].get(key, load)


def _grid(newest: _Latest, run: Run, dataset: Dataset, size: int) -> dict[str, Any]:
    lo, hi = newest.low, newest.high
    pad = np.where(hi > lo, (hi - lo) * GRID_MARGIN, 1.0)
    lo, hi = lo - pad, hi + pad
    xs, ys = np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size)
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row by row, y rising
    answer = newest.model.predict(points)
    labels = None
    if "probabilities" in answer:
        p = np.asarray(answer["probabilities"])
        values = p[:, 1] if p.shape[1] == 2 else p.max(axis=1)
        labels = p.argmax(axis=1).reshape(size, size).tolist()
    else:
        values = np.asarray(answer["outputs"])[:, 0]
    return {"run_id": run.id, "weights": newest.kind, "phase": newest.phase,
            "epoch": newest.epoch, "size": size, "x": [float(lo[0]), float(hi[0])],
            "y": [float(lo[1]), float(hi[1])], "values": finite(values.reshape(size, size).tolist()),
            "labels": labels, "classes": dataset.classes,
            "validation": newest.validation.tolist()}
