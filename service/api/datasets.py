"""/v1/datasets: upload (JSON arrays, a generator, or a CSV/NPZ file), list, describe, delete."""

from __future__ import annotations

import math
import re
import secrets
import uuid
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from sqlalchemy.exc import IntegrityError

import nn
from nn.fields import as_integer
from nn.generators import SEQ2SEQ_KINDS
from nn.seq2seq import EOS
from service import dataio, idempotency, offload
from service.api.common import fetch, json_response, owned, select_owned
from service.auth import tenant_id
from service.db import get_session
from service.errors import ApiError, not_found, size, validation_error
from service.limits import check_stored_bytes
from service.models import Dataset, Prediction, Run, new_id, utcnow
from service.pagination import decode_cursor, encode_cursor, page, page_limit, request_cursor
from service.params import json_object
from service.schemas import validate
from service.serialize import dataset_json, finite

bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")

ZIP_MAGIC = b"PK\x03\x04"
SAMPLE_VALUES = 200_000  # most input values on one page of GET .../samples
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@bp.post("")
@idempotency.idempotent
def create() -> Response:
    limits = dataio.Limits.from_config(current_app.config)
    # The body read here, on the loop; reading it into arrays may run off it (service/offload.py).
    raw = request.get_data(cache=True)
    read = _from_upload if request.mimetype == "multipart/form-data" else _from_json
    incoming = offload.run(read, limits, size=len(raw))
    dataset = offload.run(_dataset, incoming, size=incoming.inputs.nbytes)
    session = get_session()
    session.add(dataset)
    session.flush()  # counted by the quota (limits.lock_tenant)
    try:
        check_stored_bytes(session, dataset.tenant_id, current_app.config)
    except ApiError:
        session.rollback()
        raise
    response = json_response(dataset_json(dataset), 201, f"/v1/datasets/{dataset.id}")
    replay = idempotency.commit(session, response)
    return replay if replay is not None else response


@bp.get("/<uuid:dataset_id>/samples")
def samples(dataset_id: uuid.UUID) -> Response:
    """A page of the samples in their stored order, `{"index", "input", "target"}` each: for
    drawing the data (a scatter of two features, an image grid). A page holds at most
    SAMPLE_VALUES input values, whatever `limit` asks."""
    session = get_session()
    dataset = fetch(session, Dataset, dataset_id, "data set")
    limit = min(page_limit(), max(1, SAMPLE_VALUES // max(1, math.prod(dataset.input_shape))))
    cursor = request_cursor()
    start = decode_cursor(cursor, (Dataset.n_samples,))[0] if cursor else 0
    return offload.run(_samples_page, dataset.data, start, limit, size=dataset.size_bytes)


def _samples_page(data: bytes, start: int, limit: int) -> Response:
    inputs, targets = dataio.decode(data)
    stop = min(start + limit, len(inputs))
    items = [{"index": i, "input": x, "target": t} for i, x, t in zip(
        range(start, stop), finite(inputs[start:stop].tolist()), targets[start:stop].tolist())]
    more = encode_cursor([stop]) if stop < len(inputs) else None
    return json_response({"items": items, "next_cursor": more})


@bp.get("")
def list_() -> Response:
    stmt = select_owned(Dataset)
    digest = request.args.get("sha256")
    if digest is not None:
        if not SHA256.fullmatch(digest):
            raise validation_error("query.sha256", "must be 64 hexadecimal digits")
        stmt = stmt.where(Dataset.sha256 == digest.lower())
    keys = (Dataset.created_at, Dataset.id)
    return json_response(page(get_session(), stmt, keys, dataset_json, descending=True))


@bp.get("/<uuid:dataset_id>")
def get(dataset_id: uuid.UUID) -> Response:
    return json_response(dataset_json(fetch(get_session(), Dataset, dataset_id, "data set")))


@bp.delete("/<uuid:dataset_id>")
def delete(dataset_id: uuid.UUID) -> Response:
    """Refused (409 dataset_in_use) while any run or batch prediction, finished or not,
    references the data set."""
    session = get_session()
    dataset = fetch(session, Dataset, dataset_id, "data set")
    runs = session.scalars(sa.select(Run.id).where(Run.dataset_id == dataset.id).limit(20)).all()
    jobs = session.scalars(sa.select(Prediction.id).where(Prediction.dataset_id == dataset.id)
                           .limit(20)).all()
    if runs or jobs:
        raise _in_use(dataset.id, list(runs), list(jobs))
    try:
        done = session.execute(sa.delete(Dataset).where(owned(Dataset), Dataset.id == dataset.id))
        session.commit()
    except IntegrityError:  # a run was created meanwhile (the foreign key is RESTRICT)
        session.rollback()
        raise _in_use(dataset.id, [], []) from None
    if done.rowcount == 0:  # deleted meanwhile by another request: that one answered 204
        raise not_found("data set", dataset.id)
    return Response(status=204)


def _in_use(dataset_id: str, runs: list[str], predictions: list[str]) -> ApiError:
    users = "runs" if not predictions else "batch predictions" if not runs else \
        "runs and batch predictions"
    return ApiError(
        409,
        "dataset_in_use",
        f"data set {dataset_id} is used by {users}; delete those first",
        runs=runs,
        predictions=predictions,
    )


# ---- the three ways in --------------------------------------------------------------------

class Incoming(NamedTuple):
    """A data set as the request gave it, before it is described and stored."""

    name: str
    task: str | None
    inputs: np.ndarray  # (N, D) float64
    targets: np.ndarray  # (N,) or (N, K)
    source: dict[str, Any]


def _from_json(limits: dataio.Limits) -> Incoming:
    body = json_object()
    if "generator" in body:
        validate("DatasetFromGenerator", body)
        return _generate(body, limits)
    for field in ("inputs", "targets"):     # as an .npz upload's arrays are
        dataio.check_samples(body.get(field), field, limits.max_rows, limits.max_features)
    validate("DatasetFromArrays", body)
    if body.get("task") == "seq2seq":
        inputs, targets = _sequences(body, limits)
    else:
        inputs = dataio.tensor(body["inputs"], "inputs")
        targets = dataio.targets_array(body["targets"])
    return Incoming(body["name"], body.get("task"), inputs, targets, {"kind": "json"})


def _sequences(body: dict[str, Any], limits: dataio.Limits) -> tuple[np.ndarray, np.ndarray]:
    """seq2seq rows of different lengths -> padded arrays, costed before they are made."""
    inputs, targets = body["inputs"], body["targets"]
    if len(targets) != len(inputs):
        raise validation_error("targets", f"has {len(targets)} rows; inputs has {len(inputs)}")
    padded = sum(len(rows) * (1 + max(len(r) if isinstance(r, list) else 0 for r in rows))
                 for rows in (inputs, targets))
    _check_stored_size(padded * 8, "inputs")
    return (dataio.sequences(inputs, "inputs", limits.max_features).astype(np.float64),
            dataio.sequences(targets, "targets", limits.max_features, end=EOS))


def _generate(body: dict[str, Any], limits: dataio.Limits) -> Incoming:
    """nn.generate, with every parameter recorded in `source` (a missing seed is drawn), so
    the data set can be made again."""
    # JSON has numbers only: 500.0 is the integer 500 the schema allows, and the engine's
    # generators take Python ints.
    spec = {k: v if k == "noise" or as_integer(v) is None else as_integer(v)
            for k, v in body["generator"].items()}
    kind = spec["kind"]
    n_samples = spec.get("n_samples", 500)
    if isinstance(n_samples, int) and n_samples > limits.max_rows:
        raise validation_error("generator.n_samples", f"must be <= {limits.max_rows} (the limit)")
    params = {
        "kind": kind,
        "n_samples": n_samples,
        "noise": spec.get("noise", 0),
        "seed": spec["seed"] if spec.get("seed") is not None else secrets.randbelow(2**31),
        **nn.DEFAULTS["generator"].get(kind, {}),
        **{k: v for k, v in spec.items() if k not in ("kind", "n_samples", "noise", "seed")},
    }
    try:
        # Costed before it is made: a glyphs set over the limit took 1.6 GB to find out.
        x_shape, y_shape = nn.generator_shapes(**params)
        arrays = {"inputs": dataio.NpyHeader((n_samples, *x_shape), np.dtype(np.float64)),
                  "targets": dataio.NpyHeader((n_samples, *y_shape), np.dtype(np.int64))}
        _check_stored_size(dataio.stored_bytes(arrays), "generator.n_samples")
        inputs, targets = offload.run(lambda: nn.generate(**params),
                                      size=dataio.stored_bytes(arrays))
    except nn.SpecError as e:
        raise validation_error(e.path, e.message) from None
    source = {"kind": "generator", "generator": params}
    task = "seq2seq" if kind in SEQ2SEQ_KINDS else "classification"
    return Incoming(body["name"], task, inputs, targets, source)


def _check_stored_size(stored: int, field: str) -> None:
    """A 413 naming `field` when a data set of `stored` bytes is over DATASET_MAX_BYTES."""
    limit = int(current_app.config["DATASET_MAX_BYTES"])
    if stored > limit:
        detail = f"the data set takes {size(stored)}; the limit is {size(limit)} " \
                 f"(DATASET_MAX_BYTES)"
        errors = [{"path": field, "message": detail}]
        raise ApiError(413, "payload_too_large", detail, errors=errors)


def _from_upload(limits: dataio.Limits) -> Incoming:
    """multipart/form-data: a "file" part (CSV, or NPZ recognised by its zip signature)."""
    form = request.form.to_dict()
    upload = request.files.get("file")
    fields: dict[str, Any] = {**form, **{k: f.filename or "" for k, f in request.files.items()}}
    fields = {k or "": v for k, v in fields.items()}  # a part without a name has key None
    validate("DatasetUpload", fields)
    if upload is not None:
        raw, filename = upload.read(), (upload.filename or "")[:200]
    else:  # a plain text field named "file" (curl -F 'file=<data.csv') is CSV text
        raw, filename = form["file"].encode(), ""
    if raw.startswith(ZIP_MAGIC):
        inputs, targets = dataio.from_npz(raw, limits)
        source: dict[str, Any] = {"kind": "npz", "filename": filename}
    elif form.get("task") == "seq2seq":
        raise validation_error("task", "a seq2seq data set is uploaded as JSON rows or as an "
                                       ".npz of padded (N, T) arrays, not as CSV")
    else:
        target_column = form.get("target_column")
        inputs, targets, features = dataio.from_csv(raw, target_column, limits)
        source = {
            "kind": "csv",
            "filename": filename,
            "target_column": target_column,
            "feature_columns": features,
        }
    return Incoming(form["name"], form.get("task"), inputs, targets, source)


def _dataset(incoming: Incoming) -> Dataset:
    """The row to store (not yet added), once the arrays are described and encoded."""
    source = incoming.source
    field = {"json": "inputs", "generator": "generator.n_samples"}.get(source["kind"], "file")
    try:
        info = nn.describe(incoming.inputs, incoming.targets, incoming.task)
    except nn.SpecError as e:  # name the request field the bad arrays came from
        where = e.path if source["kind"] == "json" else field
        message = e.message if where == e.path else f"{e.path}: {e.message}"
        raise validation_error(where, message) from None
    data = dataio.encode(incoming.inputs, incoming.targets)
    _check_stored_size(len(data), field)
    return Dataset(
        id=new_id(),
        tenant_id=tenant_id(),
        created_at=utcnow(),
        name=incoming.name,
        n_samples=info.n_samples,
        input_shape=list(info.input_shape),
        task=info.task,
        classes=info.classes,
        target_dim=info.target_dim,
        sha256=dataio.sha256(data),
        source=source,
        size_bytes=len(data),
        data=data,
    )
