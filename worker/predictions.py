"""Run one batch prediction: claim it, then compute and store its chunks one at a time.

The job is leased, fenced, released and settled exactly as a run is (worker/lease.py with
job=Prediction; the reconciler republishes it when its message is lost or its worker died).
Each chunk is read from the data set's stored bytes by range (dataio.InputRows), predicted,
and written in one fenced transaction with the job's progress, so a chunk is stored once and
a claim that follows a dead worker goes on from the first chunk missing. At most one chunk's
inputs, computation and result are held at a time (service/predictions.py). A worker asked
to shut down (worker/shutdown.py) hands the job back after the chunk it is making, as a
run is handed back, and another worker goes on with it at once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import NamedTuple

import numpy as np
import sqlalchemy as sa
from flask import current_app

import nn
from service import dataio, logs, predictions
from service.db import session_scope
from service.models import Artifact, Dataset, Prediction, PredictionChunk, utcnow
from service.queue import publish_prediction
from worker import lease, shutdown

log = logging.getLogger(__name__)

NOT_RUN = ("dropped", "settled", "lease_lost", "handed_back")


class InvalidData(Exception):
    """The job's weights or data no longer load: it fails with invalid_data."""


class Claimed(NamedTuple):
    token: str
    run_id: str
    weights: str
    dataset_id: str
    rows_total: int
    chunk_rows: int
    first_chunk: int  # the first chunk not stored yet


def run_prediction(prediction_id: str) -> str:
    """Claim and run the job, in the app context: its final status, or why it was not run
    ("dropped": not claimable; "settled": ended by lease.settle_abandoned; "lease_lost":
    taken over meanwhile; "handed_back": this worker is shutting down)."""
    with logs.bound(prediction_id=prediction_id):
        claimed = _claim(prediction_id)
        if isinstance(claimed, str):
            return claimed
        try:
            return _run(prediction_id, claimed)
        except lease.LeaseLost:
            log.warning("prediction %s: lease lost; stopped, wrote nothing more", prediction_id)
            return "lease_lost"


def _claim(prediction_id: str) -> Claimed | str:
    cfg = current_app.config
    now = utcnow()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with session_scope() as session:
        token = lease.claim(session, prediction_id, now=now, job=Prediction, worker=worker,
                            lease_seconds=cfg["LEASE_SECONDS"], max_attempts=cfg["MAX_ATTEMPTS"])
        if token is None:
            settled = lease.settle_abandoned(session, now=now, run_id=prediction_id,
                                             max_attempts=cfg["MAX_ATTEMPTS"], job=Prediction)
            return "settled" if settled else "dropped"
        job = session.get(Prediction, prediction_id)
        assert job is not None  # the claim matched it
        stored = session.scalar(sa.select(sa.func.count()).select_from(PredictionChunk)
                                .where(PredictionChunk.prediction_id == prediction_id))
        log.info("prediction %s: claimed by %s (attempt %d, from chunk %d)", prediction_id,
                 worker, job.attempts, stored)
        return Claimed(token, job.run_id, job.weights, job.dataset_id, job.rows_total,
                       job.chunk_rows, stored)


def _run(prediction_id: str, claimed: Claimed) -> str:
    try:
        model, layout = _load(claimed)
    except InvalidData as exc:
        return _finish(prediction_id, claimed.token, status="failed",
                       error_code="invalid_data", error_message=str(exc))
    limit = int(current_app.config["PREDICT_MAX_MEMORY_BYTES"])
    batch = max(1, limit // max(1, model.sample_bytes))
    n_chunks = -(-claimed.rows_total // claimed.chunk_rows)
    try:
        for chunk in range(claimed.first_chunk, n_chunks):
            start = chunk * claimed.chunk_rows
            stop = min(claimed.rows_total, start + claimed.chunk_rows)
            inputs = _rows(claimed.dataset_id, layout, start, stop)
            try:
                data = predictions.encode_chunk(model.predict_arrays(inputs, batch))
            except nn.SpecError as exc:  # outputs that overflow, rows numbered in the chunk
                return _finish(prediction_id, claimed.token, status="failed",
                               error_code="invalid_data",
                               error_message=f"rows {start} to {stop - 1}: {exc.message}")
            del inputs
            with session_scope() as session:
                cancel = lease.fence(session, prediction_id, claimed.token, now=utcnow(),
                                     lease_seconds=current_app.config["LEASE_SECONDS"],
                                     job=Prediction, rows_done=stop)
                session.add(PredictionChunk(prediction_id=prediction_id, chunk=chunk,
                                            rows=stop - start, data=data))
                # what it counts toward the tenant's stored bytes (service/usage.py)
                session.execute(sa.update(Prediction).where(Prediction.id == prediction_id)
                                .values(result_bytes=Prediction.result_bytes + len(data)),
                                execution_options=lease.NO_SYNC)
            if cancel:
                return _finish(prediction_id, claimed.token, status="cancelled")
            if shutdown.requested.is_set() and stop < claimed.rows_total:
                return _hand_back(prediction_id, claimed.token, stop)
    except InvalidData as exc:
        return _finish(prediction_id, claimed.token, status="failed",
                       error_code="invalid_data", error_message=str(exc))
    except lease.LeaseLost:
        raise
    except Exception as exc:
        _finish(prediction_id, claimed.token, status="failed", error_code="internal_error",
                error_message=f"{type(exc).__name__}: {exc}")
        raise
    return _finish(prediction_id, claimed.token, status="succeeded")


def _load(claimed: Claimed) -> tuple[nn.Model, dataio.InputRows | np.ndarray]:
    """The model, and where the data set's input rows lie in its stored bytes (or, for bytes
    not laid out as dataio.encode writes them, the decoded inputs)."""
    with session_scope() as session:
        weights = session.scalar(sa.select(Artifact.data).where(
            Artifact.run_id == claimed.run_id, Artifact.kind == claimed.weights))
        head = session.scalar(sa.select(sa.func.substr(
            Dataset.data, 1, dataio.INPUT_HEAD_BYTES, type_=sa.LargeBinary))
            .where(Dataset.id == claimed.dataset_id))
    if weights is None:
        raise InvalidData(f"run {claimed.run_id} has no {claimed.weights} weights any more")
    if head is None:
        raise InvalidData(f"data set {claimed.dataset_id} not found")
    try:
        model = nn.Model.from_npz(weights)
    except ValueError as exc:
        raise InvalidData(f"the stored weights do not load: {exc}") from exc
    layout = dataio.input_rows(bytes(head))
    if layout is None:  # not as dataio.encode writes it: read it whole, once
        log.warning("data set %s: its inputs cannot be read by range; reading them whole",
                    claimed.dataset_id)
        with session_scope() as session:
            return model, dataio.decode(session.get(Dataset, claimed.dataset_id).data)[0]
    if layout.rows != claimed.rows_total:
        raise InvalidData(f"data set {claimed.dataset_id} has {layout.rows} rows, not "
                          f"{claimed.rows_total}")
    return model, layout


def _rows(dataset_id: str, layout: dataio.InputRows | np.ndarray, start: int, stop: int
          ) -> np.ndarray:
    """Input rows [start, stop): read by range from the stored bytes."""
    if isinstance(layout, np.ndarray):
        return layout[start:stop]
    position, length = layout.slice(start, stop)
    with session_scope() as session:
        raw = session.scalar(sa.select(sa.func.substr(Dataset.data, position, length,
                                                      type_=sa.LargeBinary))
                             .where(Dataset.id == dataset_id))
    if raw is None:
        raise InvalidData(f"data set {dataset_id} not found")
    return layout.decode(bytes(raw), start, stop)


def _hand_back(prediction_id: str, token: str, rows_done: int) -> str:
    """Shutting down: the job back in the queue with the chunks it has (a cancel requested
    meanwhile ends it cancelled instead), and another worker woken for it."""
    with session_scope() as session:
        cancel = lease.fence(session, prediction_id, token, now=utcnow(),
                             lease_seconds=current_app.config["LEASE_SECONDS"], job=Prediction)
        if not cancel:
            lease.hand_back(session, prediction_id, token, job=Prediction)
    if cancel:
        return _finish(prediction_id, token, status="cancelled")
    log.info("prediction %s: handed back to the queue after %d rows", prediction_id, rows_done)
    try:
        publish_prediction(prediction_id)
    except Exception:  # noqa: BLE001 - the broker may be down; the reconciler republishes
        log.warning("prediction %s: could not publish it again; the reconciler will",
                    prediction_id, exc_info=True)
    return "handed_back"


def _finish(prediction_id: str, token: str, *, status: str, error_code: str | None = None,
            error_message: str | None = None) -> str:
    """Release the job with its outcome (fenced; its webhook event in the same
    transaction). A cancel requested meanwhile wins over success."""
    with session_scope() as session:
        cancel = lease.fence(session, prediction_id, token, now=utcnow(),
                             lease_seconds=current_app.config["LEASE_SECONDS"], job=Prediction)
        if cancel and status == "succeeded":
            status = "cancelled"
        lease.release(session, prediction_id, token, now=utcnow(), job=Prediction,
                      status=status, error_code=error_code, error_message=error_message)
    log.info("prediction %s: %s%s", prediction_id, status,
             f" ({error_code}: {error_message})" if error_code else "")
    return status
