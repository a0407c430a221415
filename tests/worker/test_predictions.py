"""Batch predictions in the worker (worker/predictions.py): leased and reconciled as runs are,
resumed from the first chunk missing after a worker dies, given up after MAX_ATTEMPTS; and a
million rows made and answered holding a few chunks at a time (measured with tracemalloc)."""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

import nn
from service import auth, db, predictions
from service.models import Artifact, Prediction, PredictionChunk, Run, utcnow
from tests.worker.rows import add_run, tenant
from worker import predictions as worker_predictions
from worker import shutdown
from worker.predictions import run_prediction
from worker.reconcile import reconcile


class Killed(BaseException):
    """The worker process dying mid-job: nothing after it runs, its lease stays."""


def _model(run_id: str, dataset_id: str) -> nn.Model:
    """Train the run a few epochs (as a worker would) and store its final weights."""
    from service import dataio
    from service.models import Dataset

    with db.session_scope() as session:
        run = session.get(Run, run_id)
        dataset = session.get(Dataset, dataset_id)
        inputs, targets = dataio.decode(dataset.data)
        plan = nn.build(run.network, {**run.training, "epochs": 5},
                        nn.describe(inputs[:200], targets[:200], dataset.task))
        model = nn.train(plan, inputs[:200], targets[:200]).model
        session.add(Artifact(run_id=run_id, kind="final", epoch=5, data=model.to_npz()))
        run.status, run.finished_at = "succeeded", utcnow()
    return model


def _job(run_id: str, dataset_id: str, rows: int, chunk_rows: int, **columns: object) -> str:
    with db.session_scope() as session:
        job = Prediction(tenant_id=tenant(), dataset_id=dataset_id, run_id=run_id,
                         weights="final", rows_total=rows, chunk_rows=chunk_rows,
                         classes=[0, 1], **columns)
        session.add(job)
    return job.id


def _job_row(job_id: str) -> Prediction:
    with db.session_scope() as session:
        return session.get(Prediction, job_id)


def _outputs(job_id: str) -> np.ndarray:
    with db.session_scope() as session:
        chunks = session.scalars(sa.select(PredictionChunk.data).where(
            PredictionChunk.prediction_id == job_id).order_by(PredictionChunk.chunk)).all()
    return np.concatenate([predictions.decode_chunk(c)["outputs"] for c in chunks])


@pytest.fixture
def trained(dataset: str, make_run: Callable[..., str]) -> tuple[str, nn.Model]:
    run_id = make_run()
    return run_id, _model(run_id, dataset)


def test_a_job_whose_worker_died_resumes_from_its_first_missing_chunk(
    app: Flask, dataset: str, trained: tuple[str, nn.Model], monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id, model = trained
    job_id = _job(run_id, dataset, rows=100, chunk_rows=30)
    encode, made = predictions.encode_chunk, []

    def dies_at_the_third(arrays: dict) -> bytes:
        made.append(len(arrays["outputs"]))
        if len(made) == 3:
            raise Killed
        return encode(arrays)

    monkeypatch.setattr(predictions, "encode_chunk", dies_at_the_third)
    with pytest.raises(Killed):
        run_prediction(job_id)
    dead = _job_row(job_id)
    assert (dead.status, dead.rows_done, dead.attempts) == ("running", 60, 1)

    monkeypatch.setattr(predictions, "encode_chunk", encode)
    assert reconcile()["republished"] == 0  # its lease has not expired
    with db.session_scope() as session:
        session.execute(sa.update(Prediction).where(Prediction.id == job_id)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert reconcile()["republished"] == 1
    assert run_prediction(job_id) == "succeeded"
    done = _job_row(job_id)
    assert (done.status, done.rows_done, done.attempts) == ("succeeded", 100, 2)
    inputs = nn.generate("xor", 100, 0, seed=1)[0]
    np.testing.assert_array_equal(_outputs(job_id), model.predict_arrays(inputs)["outputs"])
    with db.session_scope() as session:
        stored = session.scalar(sa.select(sa.func.sum(sa.func.length(PredictionChunk.data)))
                                .where(PredictionChunk.prediction_id == job_id))
    assert done.result_bytes == stored  # each chunk counted once
    assert run_prediction(job_id) == "dropped"  # a duplicate message


def test_a_worker_shutting_down_hands_the_job_back(
    app: Flask, dataset: str, trained: tuple[str, nn.Model], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked to stop, the worker stores the chunk it is making, puts the job back in the
    queue (the claim not counted) and publishes it; the next worker goes on from there."""
    job_id = _job(trained[0], dataset, rows=100, chunk_rows=30)
    requested = threading.Event()
    monkeypatch.setattr(shutdown, "requested", requested)
    encode, made, published = predictions.encode_chunk, [], []
    monkeypatch.setattr(worker_predictions, "publish_prediction", published.append)

    def stop_asked_at_the_second(arrays: dict) -> bytes:
        made.append(1)
        if len(made) == 2:
            requested.set()
        return encode(arrays)

    monkeypatch.setattr(predictions, "encode_chunk", stop_asked_at_the_second)
    assert run_prediction(job_id) == "handed_back"
    back = _job_row(job_id)
    assert (back.status, back.rows_done, back.attempts, back.lease_token) == \
        ("queued", 60, 0, None)
    assert published == [job_id]
    requested.clear()
    assert run_prediction(job_id) == "succeeded"
    assert (_job_row(job_id).attempts, len(_outputs(job_id))) == (1, 100)


def test_a_job_that_kills_every_worker_fails_worker_lost(
    app: Flask, dataset: str, trained: tuple[str, nn.Model],
) -> None:
    dead = utcnow() - timedelta(seconds=1)
    job_id = _job(trained[0], dataset, rows=100, chunk_rows=30, status="running",
                  attempts=app.config["MAX_ATTEMPTS"], lease_token="t", lease_expires_at=dead)
    assert reconcile()["settled"] == 1
    failed = _job_row(job_id)
    assert (failed.status, failed.error_code) == ("failed", "worker_lost")
    assert failed.error_message.startswith("the prediction was claimed 3 times")


def _big_xor(rows: int) -> str:
    """A data set of `rows` XOR points (the generator stops at 100,000), stored as the API
    stores one."""
    from service import dataio
    from service.models import Dataset

    inputs = np.random.default_rng(1).uniform(-5, 5, (rows, 2))
    targets = ((inputs[:, 0] > 0) != (inputs[:, 1] > 0)).astype(np.int64)
    data = dataio.encode(inputs, targets)
    row = Dataset(tenant_id=tenant(), name="big", n_samples=rows, input_shape=[2],
                  task="classification", classes=[0, 1], target_dim=1,
                  sha256=dataio.sha256(data), source={"json": True}, size_bytes=len(data),
                  data=data)
    with db.session_scope() as session:
        session.add(row)
    return row.id


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_million_rows_hold_a_few_chunks(app: Flask) -> None:
    """The worker making a million rows' result, and the API answering it as .npz (all of
    it) and as CSV (its first 200,000 rows: tracemalloc makes text formatting ten times
    slower, and the stream's peak does not grow with the rows), each peak at a few chunks'
    worth of memory above where they started, against 32 MB for the whole result (and
    16 MB of inputs)."""
    rows, chunk_rows = 1_000_000, 10_000
    dataset = _big_xor(rows)
    run_id = add_run(dataset)
    _model(run_id, dataset)
    job_id = _job(run_id, dataset, rows=rows, chunk_rows=chunk_rows)
    # a chunk: 2 inputs, 1 output, 1 label and 2 probabilities a row, 8 bytes each
    chunk_bytes = chunk_rows * 6 * 8
    with db.session_scope() as session:
        key = auth.issue_key(session, auth.tenant_named(session, "test"))[1]
    client = FlaskClient(app, use_cookies=False)
    url = f"/v1/predictions/{job_id}/result?format="

    def stream(fmt: str, most: int) -> int:
        resp = client.get(url + fmt, headers={"Authorization": f"Bearer {key}"},
                          buffered=False)
        assert resp.status_code == 200
        size = 0
        for piece in resp.response:
            size += len(piece)
            if size >= most:
                break
        resp.close()
        return size

    tracemalloc.start()
    try:
        peaks = {}
        for name, work in (("worker", lambda: run_prediction(job_id)),
                           ("npz", lambda: stream("npz", 10**12)),
                           ("csv", lambda: stream("csv", 200_000 * 55))):
            if name == "csv":
                stream("csv", 1)  # what a first request of its kind loads, once
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            done = work()
            peaks[name] = tracemalloc.get_traced_memory()[1] - base
            if name == "worker":
                assert done == "succeeded" and _job_row(job_id).rows_done == rows
                stream("npz", 1)  # likewise
            elif name == "npz":
                assert done > rows * 4 * 8
    finally:
        tracemalloc.stop()
    print("\npeaks above the start, in chunks of", chunk_bytes, "bytes:",
          {k: round(v / chunk_bytes, 1) for k, v in peaks.items()})
    assert all(peak < 6 * chunk_bytes for peak in peaks.values()), peaks


def test_retention_deletes_old_finished_jobs_with_their_results(
    app: Flask, dataset: str, trained: tuple[str, nn.Model],
) -> None:
    old = _job(trained[0], dataset, rows=100, chunk_rows=50)
    assert run_prediction(old) == "succeeded"
    with db.session_scope() as session:
        session.execute(sa.update(Prediction).where(Prediction.id == old)
                        .values(finished_at=utcnow() - timedelta(hours=2)))
    recent = _job(trained[0], dataset, rows=100, chunk_rows=50)
    assert run_prediction(recent) == "succeeded"
    queued = _job(trained[0], dataset, rows=100, chunk_rows=50)
    assert reconcile()["predictions"] == 0  # retention is off by default
    app.config["RUN_RETENTION_SECONDS"] = 3600
    assert reconcile()["predictions"] == 1
    assert _job_row(old) is None
    with db.session_scope() as session:
        left = session.scalars(sa.select(PredictionChunk.prediction_id).distinct()).all()
    assert left == [recent]
    assert _job_row(queued).status == "queued"
