"""What a run produced: per-epoch rows, per-layer statistics, weights, predictions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from sqlalchemy.orm import Session

import nn
from nn.seq2seq import EOS
from service import artifacts, dataio, offload, onnx_export, statstore
from service.api.common import fetch, json_response, run_artifact
from service.db import get_session
from service.errors import ApiError, not_found, size, validation_error
from service.models import Dataset, Epoch, EpochStats, Run
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
from service.serialize import epoch_json, finite

bp = Blueprint("results", __name__, url_prefix="/v1/runs/<uuid:run_id>")

PHASES = ("pretrain", "train")
MAX_POINTS = 100_000
# Epochs and layers are INTEGER columns (32 bits in PostgreSQL).
INT_COLUMN_MAX = 2**31 - 1
MAX_GRID = 100  # GET .../boundary: at most MAX_GRID x MAX_GRID points
GRID_MARGIN = 0.05  # the grid spans the data and this fraction of its range on each side
OCTET_STREAM = "application/octet-stream"
NPZ_TYPES = ("application/x-npz", OCTET_STREAM)
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
    layer = arg_int("layer", None, 0, INT_COLUMN_MAX)
    detail = arg_choice("detail", ("true", "false"), "true") == "true"
    where = [] if layer is None else [statstore.has_layer(EpochStats.layout, layer)]
    session = get_session()
    where, limit = _series(session, run_id, EpochStats, keys, where)
    cursor = request_cursor()
    after = decode_cursor(cursor, keys) if cursor else None
    if after is not None:
        where.append(sa.tuple_(EpochStats.phase, EpochStats.epoch) >= sa.tuple_(
            sa.literal(after[0], EpochStats.phase.type), sa.literal(after[1])))
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
    first = arg_int("from_epoch", None, 0, INT_COLUMN_MAX)
    last = arg_int("to_epoch", None, 0, INT_COLUMN_MAX)
    if first is not None and last is not None and last < first:
        raise validation_error("query.to_epoch", "must be >= from_epoch")
    max_points = arg_int("max_points", None, 2, MAX_POINTS)
    limit = page_limit()
    where = [entity.run_seq == run.seq, *where]
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
    the network as an ONNX model for ?format=onnx or Accept: application/onnx.
    which=latest: the newest weights as JSON, whatever they are (`_latest`)."""
    which = arg_choice("which", (*artifacts.MODEL_KINDS, "latest"), "final")
    media = _weights_media_type()
    if which == "latest":
        if media != "application/json":
            raise ApiError(406, "not_acceptable", "which=latest is served as JSON")
        newest = _latest(get_session(), fetch(get_session(), Run, run_id, "run"))
        return _weights_json(run_id, newest.kind, newest.epoch, newest.model)
    if media == onnx_export.MEDIA_TYPE:
        return _onnx(run_id, which)
    if media == "application/json":
        status, found = _stored_model(run_id, which)
        if found is None:
            raise _no_weights(str(run_id), which, status)
        return _weights_json(run_id, which, found[0], found[1])
    return _npz(run_id, which, media)


# The weights as files, each of one type, for clients that pick how to read an answer by its
# operation (generated ones): what GET .../weights answers for format=npz and format=onnx.

@bp.get("/weights.npz")
def weights_npz(run_id: uuid.UUID) -> Response:
    return _npz(run_id, arg_choice("which", artifacts.MODEL_KINDS, "final"), OCTET_STREAM)


@bp.get("/weights.onnx")
def weights_onnx(run_id: uuid.UUID) -> Response:
    return _onnx(run_id, arg_choice("which", artifacts.MODEL_KINDS, "final"), OCTET_STREAM)


def _npz(run_id: uuid.UUID, which: str, media: str) -> Response:
    """The stored .npz bytes of the run's `which` weights, as `media`."""
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    row = artifacts.artifact(session, run.id, which, with_data=True)
    if row is None:
        raise _no_weights(run.id, which, fetch(session, Run, run_id, "run").status)
    resp = Response(row.data, mimetype=media)
    resp.headers["Content-Disposition"] = f'attachment; filename="run-{run.id}-{which}.npz"'
    return resp


def _weights_json(run_id: uuid.UUID, which: str, epoch: int, model: nn.Model) -> Response:
    def answer() -> Response:
        layers = nn.weights_to_json(model.weights)["layers"]
        return json_response({"run_id": str(run_id), "which": which, "epoch": epoch,
                              "layers": layers})

    return offload.run(answer, size=_nbytes(model))


def _nbytes(model: nn.Model) -> int:
    return sum(a.nbytes for layer in model.weights for a in layer.values())


def _onnx(run_id: uuid.UUID, which: str, media: str = onnx_export.MEDIA_TYPE) -> Response:
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
    resp = Response(proto.SerializeToString(), mimetype=media)
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
    body = predict_body()
    which = body.get("which", "final")
    status, found = _stored_model(run_id, which)
    return predict_answer(str(run_id), which, status, found, body)


def predict_body() -> dict[str, Any]:
    """The PredictRequest body, checked (rows and the first sample counted before the body
    is validated value by value; a 422 naming the field); off the event loop when large."""
    return offload.run(_predict_request, size=_body_bytes())


def _body_bytes() -> int:
    return len(request.get_data(cache=True))


def _predict_request() -> dict[str, Any]:
    body = json_object()
    config = current_app.config
    dataio.check_samples(body.get("inputs"), "inputs", int(config["PREDICT_MAX_ROWS"]),
                         int(config["DATASET_MAX_FEATURES"]))
    validate("PredictRequest", body)
    return body


# The PredictRequest fields that only decoding (a seq2seq run) reads.
DECODE_FIELDS = ("max_length", "beam_size", "attention")


def predict_answer(run_id: str, which: str, status: str, found: tuple[int, nn.Model] | None,
                   body: dict[str, Any]) -> Response:
    """The PredictResponse of the run's `which` weights (`found`: their epoch and model, None
    while it has none: 409 run_not_ready) for the request `body`, within
    PREDICT_MAX_MEMORY_BYTES, computed off the event loop when large: outputs (and labels
    and probabilities), or for a seq2seq model decoded token ids (`_decode`)."""
    if found is None:
        raise ApiError(
            409, "run_not_ready", f"run {run_id} has no {which} weights yet (it is {status})",
            status_now=status,
        )
    epoch, model = found
    if model.meta.get("task") == "seq2seq":
        return _decode(run_id, which, epoch, model, body)
    sent = next((f for f in DECODE_FIELDS if f in body), None)
    if sent is not None:
        raise validation_error(sent, f"applies to seq2seq runs only; run {run_id} is a "
                                     f"{model.meta.get('task')} model")
    inputs = offload.run(dataio.tensor, body["inputs"], "inputs", size=_body_bytes())
    batch_size = _batch_size(model, len(inputs),
                             int(current_app.config["PREDICT_MAX_MEMORY_BYTES"]))

    def answer() -> Response:
        try:
            result = model.predict(inputs, batch_size)
        except nn.SpecError as e:
            raise validation_error(e.path, e.message) from None
        return json_response({"run_id": run_id, "which": which, "epoch": epoch, **result})

    return offload.run(answer, size=inputs.nbytes + len(inputs) * model.sample_bytes)


def _decode(run_id: str, which: str, epoch: int, model: nn.Model, body: dict[str, Any]
            ) -> Response:
    """A seq2seq model's PredictResponse: `inputs` rows of source symbols decoded by
    Model.decode (greedy or beam search), as many inputs at a time as fit in
    PREDICT_MAX_MEMORY_BYTES beside the answer (Model.decode_cost)."""
    config = current_app.config
    # symbols only (ids from 3); the model checks their vocabulary and length (T_src)
    rows = dataio.token_rows(body["inputs"], "inputs", int(config["DATASET_MAX_FEATURES"]),
                             lowest=EOS + 1)
    max_length = body.get("max_length")
    beam_size, attention = body.get("beam_size", 1), bool(body.get("attention", False))
    # the decoder has positions for the training targets' T_tgt tokens: decoding stops there
    steps = min(max_length or model.meta["target_shape"][0], model.meta["target_shape"][0])
    per_input, values = model.decode_cost(steps, beam_size, attention)
    answer = values * ANSWER_BYTES_PER_VALUE
    limit = int(config["PREDICT_MAX_MEMORY_BYTES"])
    allowed = f"the limit is {size(limit)} (PREDICT_MAX_MEMORY_BYTES)"
    if per_input + answer > limit:
        field = next((f for f in ("max_length", "beam_size") if f in body), "inputs")
        raise validation_error(field, f"decoding one input takes about {size(per_input + answer)}"
                                      f" (beam_size {beam_size}, {steps} steps); {allowed}")
    total = len(rows) * answer
    if per_input + total > limit:
        raise validation_error("inputs", f"the answer for {len(rows)} inputs would take about "
                                         f"{size(total)}; {allowed}: send at most "
                                         f"{(limit - per_input) // answer} inputs at a time")
    batch_size = (limit - total) // per_input

    def decoded() -> Response:
        try:
            result = model.decode(rows, max_length=max_length, beam_size=beam_size,
                                  attention=attention, batch_size=batch_size)
        except nn.SpecError as e:
            raise validation_error(e.path, e.message) from None
        return json_response({"run_id": run_id, "which": which, "epoch": epoch,
                              **finite(result)})

    return offload.run(decoded, size=len(rows) * (per_input + answer))


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


@bp.get("/boundary")
def boundary(run_id: uuid.UUID) -> Response:
    """The network's answer over a grid spanning the data, as the Playground draws it: for
    data of two features, from the newest weights (`_latest`), with the rows of the
    validation split."""
    n = arg_int("size", 40, 2, MAX_GRID)
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    dataset = fetch(session, Dataset, run.dataset_id, "data set")
    if dataset.input_shape != [2]:
        raise ApiError(409, "boundary_not_available", f"the data set's samples have the shape "
                       f"{dataset.input_shape}; a boundary is drawn for two features")
    newest = _latest(session, run)
    key = ("boundary", newest.key, n)
    grid = current_app.extensions["model_cache"].get(
        key, lambda: offload.run(_grid, newest, run.id, dataset.classes, n))
    return offload.run(json_response, grid, size=8 * n * n)


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
        stored = None if row is None else artifacts.artifact(session, run.id, row.kind,
                                                             with_data=True)
        if row is not None and stored is None:  # deleted with the run since the first read
            raise not_found("run", run.id)
        data, task, network, training = dataset.data, dataset.task, run.network, run.training
        weights = None if stored is None else (stored.kind, stored.data)
        kind, phase, epoch = ("initial", "train", 0) if row is None else (
            row.kind, row.phase, row.epoch)

        def prepare() -> _Latest:  # the rows read above: the rest is computing
            inputs, targets = dataio.decode(data)
            plan = nn.build(network, training, nn.describe(inputs, targets, task))
            state = weights[1] if weights is not None and weights[0] == "checkpoint" else None
            found = nn.snapshot(plan, inputs, targets, state)
            model = nn.Model.from_npz(weights[1]) if weights is not None and state is None \
                else found.model
            return _Latest(kind, phase, epoch, model, found.validation, inputs.min(axis=0),
                           inputs.max(axis=0), key)

        return offload.run(prepare, size=len(data))

    return current_app.extensions["model_cache"].get(key, load)


def _grid(newest: _Latest, run_id: str, classes: Any, n: int) -> dict[str, Any]:
    lo, hi = newest.low, newest.high
    pad = np.where(hi > lo, (hi - lo) * GRID_MARGIN, 1.0)
    lo, hi = lo - pad, hi + pad
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row by row, y rising
    answer = newest.model.predict(points)
    labels = None
    if "probabilities" in answer:
        p = np.asarray(answer["probabilities"])
        values = p[:, 1] if p.shape[1] == 2 else p.max(axis=1)
        labels = p.argmax(axis=1).reshape(n, n).tolist()
    else:
        values = np.asarray(answer["outputs"])[:, 0]
    return {"run_id": run_id, "weights": newest.kind, "phase": newest.phase,
            "epoch": newest.epoch, "size": n, "x": [float(lo[0]), float(hi[0])],
            "y": [float(lo[1]), float(hi[1])], "values": finite(values.reshape(n, n).tolist()),
            "labels": labels, "classes": classes,
            "validation": newest.validation.tolist()}
