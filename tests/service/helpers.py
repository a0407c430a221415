"""Helpers for the API tests: canned specs, and rows written as a worker would write them."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flask import Flask
from sqlalchemy import event
from flask.testing import FlaskClient

import nn
from service import db, statstore
from service.models import STAT_FIELDS, Artifact, Epoch, EpochStats, Run, utcnow

XOR_NETWORK = {
    "layers": [
        {"type": "dense", "units": 4, "activation": "sigmoid"},
        {"type": "dense", "units": 1, "activation": "sigmoid"},
    ]
}
XOR_TRAINING = {
    "loss": "squared_error",
    "optimizer": {"type": "sgd", "learning_rate": 0.5},
    "batch_size": 1,
    "epochs": 1000,
    "seed": 1,
    "validation_fraction": 0.5,
}


def seq2seq_network(vocab: int, dim: int, heads: int, ff_units: int | None = None
                    ) -> dict[str, Any]:
    """The smallest encoder-decoder Transformer: embedding, sinusoidal positions and one
    block each side, the decoder's softmax over `vocab` tokens."""
    block = {"heads": heads} if ff_units is None else {"heads": heads, "ff_units": ff_units}

    def stack(*top: dict[str, Any]) -> dict[str, Any]:
        return {"layers": [{"type": "embedding", "vocab_size": vocab, "dim": dim},
                           {"type": "positional_encoding"}, *top]}

    return {"encoder": stack({"type": "transformer_encoder", **block}),
            "decoder": stack({"type": "transformer_decoder", **block},
                             {"type": "dense", "units": vocab, "activation": "softmax"})}


def create_xor_dataset(client: FlaskClient, n_samples: int = 40) -> dict[str, Any]:
    resp = client.post(
        "/v1/datasets",
        json={"name": "xor", "generator": {"kind": "xor", "n_samples": n_samples, "seed": 1}},
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def create_run(client: FlaskClient, dataset_id: str, **extra: Any) -> dict[str, Any]:
    body = {"dataset_id": dataset_id, "network": XOR_NETWORK, "training": XOR_TRAINING, **extra}
    resp = client.post("/v1/runs", json=body)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()


def trained_model(run: dict[str, Any], epochs: int = 3) -> nn.Model:
    """A genuinely trained Model for the run's spec on the generated XOR data (40 samples)."""
    inputs, targets = nn.generate("xor", 40, 0, 1)
    training = {**run["training"], "epochs": epochs}
    plan = nn.build(run["network"], training, nn.describe(inputs, targets))
    return nn.train(plan, inputs, targets).model


def finish_run(
    app: Flask,
    run_id: str,
    *,
    epochs: int = 10,
    artifacts: dict[str, bytes] | None = None,
    status: str = "succeeded",
    layers: tuple[int, ...] = (0, 1),
) -> None:
    """Write what a worker would: epochs, layer stats, artifacts, final status."""
    add_epoch_rows(app, run_id, range(1, epochs + 1), layers=layers)
    with db.session_scope(app) as session:
        run = session.get(Run, run_id)
        run.status = status
        run.started_at = run.started_at or utcnow()
        run.finished_at = utcnow()
        run.epochs_completed = epochs
        run.attempts = 1
        run.metrics = {"train_loss": 0.01, "val_loss": 0.02, "best_epoch": epochs}
        for kind, data in (artifacts or {}).items():
            session.add(Artifact(run_id=run_id, kind=kind, epoch=epochs, data=data))


def add_epoch_rows(app: Flask, run_id: str, epochs: Iterable[int], *, phase: str = "train",
                   layers: tuple[int, ...] = (0, 1), running: bool = False) -> None:
    """Epoch rows and their layer-stats rows (layers: those that have statistics), as a
    worker's flush writes them; `running` also sets the run running and renews its
    heartbeat, as the flush's fence does."""
    with db.session_scope(app) as session:
        seq = session.get(Run, run_id).seq
        last = 0
        for e in epochs:
            last = e
            session.add(Epoch(run_seq=seq, phase=phase, epoch=e, train_loss=1.0 / e,
                              val_loss=1.5 / e, train_accuracy=0.5, val_accuracy=None,
                              learning_rate=0.5, duration_s=0.01))
            rows = [{"layer": layer, "name": f"dense_{layer}",
                     **{f: float(e + layer) for f in STAT_FIELDS}, "act_dead_fraction": None}
                    for layer in layers]
            layout, figures = statstore.pack(rows)
            session.add(EpochStats(run_seq=seq, phase=phase, epoch=e, layout=layout,
                                   figures=figures))
        if running:
            run = session.get(Run, run_id)
            run.status, run.heartbeat_at = "running", utcnow()
            run.started_at = run.started_at or utcnow()
            if phase == "train":
                run.epochs_completed = last


def set_status(app: Flask, run_id: str, status: str) -> None:
    with db.session_scope(app) as session:
        session.get(Run, run_id).status = status


def multipart(fields: dict[str, str], file: bytes | None = None,
              filename: str = "data.csv") -> dict:
    data: dict[str, Any] = dict(fields)
    if file is not None:
        data["file"] = (io.BytesIO(file), filename)
    return data


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def problem_paths(resp) -> list[str]:  # noqa: ANN001
    body = resp.get_json()
    assert resp.content_type == "application/problem+json", (resp.status_code, body)
    return [e["path"] for e in body.get("errors", [])]


@contextmanager
def paused(app: Flask, after: str, request: Callable[[], Any]) -> Iterator[list]:
    """Run `request` in a thread of its own and hold that thread just after its first SQL
    statement containing `after` has run (the row found, say), for the block: what the block
    does (a delete through another client) happens between that statement and the next.
    The block gets a list that holds `request`'s result once the block has ended."""
    reached, resume = threading.Event(), threading.Event()
    result: list = []

    def hold(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if threading.current_thread() is worker and after in statement and not reached.is_set():
            reached.set()
            resume.wait(30)

    def run() -> None:
        try:
            result.append(request())
        except BaseException as e:  # noqa: BLE001 - shown by the test's assertion
            result.append(e)
        finally:
            reached.set()

    worker = threading.Thread(target=run)
    engine = db.engine(app)
    event.listen(engine, "after_cursor_execute", hold)
    try:
        worker.start()
        assert reached.wait(30), f"no statement with {after!r} ran"
        yield result
    finally:
        resume.set()
        worker.join(30)
        event.remove(engine, "after_cursor_execute", hold)
