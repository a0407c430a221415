"""POST/GET/DELETE /v1/runs and cancel: validation at the edge, queueing, transitions."""

from __future__ import annotations

import copy
import sys
import threading
import time
import types
import uuid
from datetime import datetime

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask

import nn
from service import db, statstore
from service.models import Artifact, Run
from tests.service.helpers import (
    XOR_NETWORK,
    XOR_TRAINING,
    create_run,
    create_xor_dataset,
    finish_run,
    paused,
    problem_paths,
    set_status,
    trained_model,
)


def _body(dataset_id: str, **changes: object) -> dict:
    body = {"dataset_id": dataset_id, "network": copy.deepcopy(XOR_NETWORK),
            "training": copy.deepcopy(XOR_TRAINING)}
    body.update(changes)
    return body


# ---- creation ------------------------------------------------------------------------------

def test_create_run(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    resp = any_client.post("/v1/runs", json=_body(dataset["id"]))
    assert resp.status_code == 202
    run = resp.get_json()
    assert resp.headers["Location"] == f"/v1/runs/{run['id']}" == run["links"]["self"]
    assert run["status"] == "queued" and run["dataset_id"] == dataset["id"]
    assert run["epochs_total"] == 1000 and run["epochs_completed"] == 0 and run["progress"] == 0
    assert run["error"] is None and run["metrics"] is None and run["started_at"] is None
    # normalised: every default filled in
    assert run["network"]["layers"][0] == {"type": "dense", "units": 4, "activation": "sigmoid",
                                           "init": {"type": "glorot"}}
    assert run["training"]["optimizer"] == {"type": "sgd", "learning_rate": 0.5,
                                            "momentum": 0.0, "nesterov": False}
    assert run["training"]["early_stopping"] is None and run["training"]["dtype"] == "float64"
    assert run["training"]["engine"] == "auto"
    # the same run, but for the estimate made as it was submitted (not stored)
    assert set(run.pop("estimate")) == {"memory_bytes", "multiply_adds", "seconds"}
    assert any_client.get(f"/v1/runs/{run['id']}").get_json() == run
    with db.session_scope(any_app) as session:
        row = session.get(Run, run["id"])
        assert row.status == "queued" and row.published_at is not None  # memory:// broker


def test_a_missing_seed_is_drawn_and_stored(client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    training = {k: v for k, v in XOR_TRAINING.items() if k != "seed"}
    run = create_run(client, dataset["id"], training=training)
    assert isinstance(run["training"]["seed"], int)


def test_training_is_optional(client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    resp = client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": XOR_NETWORK})
    assert resp.status_code == 202
    assert resp.get_json()["training"]["epochs"] == nn.DEFAULTS["training"]["epochs"]


def test_statistics_thinning_is_fixed_when_the_run_is_made(app: Flask, client) -> None:  # noqa: ANN001
    """Each phase keeps at most RUN_MAX_STATS_EPOCHS statistics epochs: a run with no more
    epochs keeps them all (null); the longer phase, pretraining or training, sets T."""
    dataset = create_xor_dataset(client)

    def thinned(**training: object) -> int | None:
        return create_run(client, dataset["id"],
                          training={**XOR_TRAINING, **training})["stats_thinned_after"]

    assert thinned(epochs=2000) is None
    assert thinned(epochs=5000) == statstore.thinned_after(5000, 2000) == 916
    assert thinned(epochs=5000, stats=False) is None
    assert thinned(epochs=10, pretrain={"epochs": 1500}) == statstore.thinned_after(1500, 2000)
    app.config["RUN_MAX_STATS_EPOCHS"] = 100
    assert thinned(epochs=1000) == statstore.thinned_after(1000, 100) == 28
    assert thinned(epochs=10, pretrain={"epochs": 200}) == statstore.thinned_after(200, 100)


def test_publish_after_commit(app: Flask, client, published: list[str]) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    assert published == [run["id"]]


def test_broker_down_still_202_and_the_run_stays_queued(client, monkeypatch, caplog) -> None:  # noqa: ANN001
    def down(_run_id: str) -> None:
        raise ConnectionError("broker down")

    fake = types.SimpleNamespace(publish_run=down)
    monkeypatch.setitem(sys.modules, "service.queue", fake)
    monkeypatch.setattr(sys.modules["service"], "queue", fake, raising=False)
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    assert client.get(f"/v1/runs/{run['id']}").get_json()["status"] == "queued"
    assert any("reconciler" in r.getMessage() for r in caplog.records)


def _422(client, body: dict, path: str, contains: str = "") -> str:  # noqa: ANN001
    resp = client.post("/v1/runs", json=body)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    errors = {e["path"]: e["message"] for e in resp.get_json()["errors"]}
    assert path in errors, errors
    assert contains in errors[path], errors[path]
    return errors[path]


def _layers(*layers: dict) -> dict:
    return {"layers": list(layers)}


DENSE4 = {"type": "dense", "units": 4}
OUT1 = {"type": "dense", "units": 1}


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        # the output layer must fit the data: 2 classes need 2 units (or 1)
        ({"network": _layers(DENSE4, {"type": "dense", "units": 3})}, "network.layers[1].units", "2 classes"),
        ({"network": _layers(DENSE4, {**OUT1, "units": 0})}, "network.layers[1].units", ">= 1"),
        ({"network": _layers(DENSE4, {**OUT1, "units": "4"})}, "network.layers[1].units", "integer"),
        ({"network": _layers(DENSE4, {**OUT1, "units": True})}, "network.layers[1].units", "integer"),
        ({"network": _layers(DENSE4, {**OUT1, "units": 10**30})}, "network.layers[1].units", "<= 100000"),
        ({"network": _layers(DENSE4, {"type": "dense"})}, "network.layers[1].units", "is required"),
        ({"network": _layers(DENSE4, {"type": "conv"})}, "network.layers[1].type", '"dense", "dropout"'),
        ({"network": _layers(DENSE4, {"units": 1})}, "network.layers[1].type", "is required"),
        ({"network": _layers(DENSE4, "dense")}, "network.layers[1]", "must be an object"),
        ({"network": _layers(DENSE4, {**OUT1, "activation": "swish"})}, "network.layers[1].activation", "must be one of"),
        ({"network": _layers(DENSE4, {**OUT1, "colour": 1})}, "network.layers[1].colour", "not a known field"),
        ({"network": _layers({"type": "dropout", "units": 3}, OUT1)}, "network.layers[0].units", "not a known field"),
        ({"network": _layers({"type": "dropout", "drop_prob": 1}, OUT1)}, "network.layers[0].drop_prob", "< 1"),
        ({"network": _layers(DENSE4, {"type": "dropout"})}, "network.layers[1].type", "last layer must be dense"),
        ({"network": _layers({**DENSE4, "activation": "softmax"}, OUT1)}, "network.layers[0].activation", "output layer"),
        ({"network": _layers({**DENSE4, "init": {"type": "orthogonal"}}, OUT1)}, "network.layers[0].init.type", "must be one of"),
        ({"network": _layers({**DENSE4, "init": {"type": "uniform", "scale": 0}}, OUT1)}, "network.layers[0].init.scale", "> 0"),
        # weights that large overflow (float32; float64 from ~9e307): never a failed run
        ({"network": _layers({**DENSE4, "init": {"type": "uniform", "scale": 1e308}}, OUT1)}, "network.layers[0].init.scale", "<= 1e+38"),
        ({"network": _layers({**DENSE4, "init": {"type": "glorot", "scale": 1}}, OUT1)}, "network.layers[0].init.scale", "not a known field"),
        ({"network": _layers(*[DENSE4] * 101)}, "network.layers", "at most 100"),
        ({"network": {"layers": []}}, "network.layers", "must not be empty"),
        ({"network": {}}, "network.layers", "is required"),
        ({"network": [1]}, "network", "must be an object"),
        ({"network": _layers({**DENSE4, "units": 100000}, {**DENSE4, "units": 100000}, OUT1)}, "network.layers", "parameters"),
        ({"training": {"epochs": -1}}, "training.epochs", ">= 0"),
        ({"training": {"epochs": 1.5}}, "training.epochs", "integer"),
        ({"training": {"epochs": 10**6}}, "training.epochs", "<= 100000"),
        ({"training": {"batch_size": 0}}, "training.batch_size", ">= 1"),
        ({"training": {"seed": -5}}, "training.seed", ">= 0"),
        ({"training": {"seed": 2**64}}, "training.seed", "<= "),
        ({"training": {"optimizer": {"type": "sgd", "learning_rate": 0}}}, "training.optimizer.learning_rate", "> 0"),
        ({"training": {"optimizer": {"type": "sgd", "learning_rate": "fast"}}}, "training.optimizer.learning_rate", "number"),
        ({"training": {"optimizer": {"type": "rmsprop"}}}, "training.optimizer.type", "must be one of"),
        ({"training": {"optimizer": {"type": "sgd", "beta1": 0.9}}}, "training.optimizer.beta1", "not a known field"),
        ({"training": {"optimizer": {"type": "adam", "beta1": 1}}}, "training.optimizer.beta1", "< 1"),
        ({"training": {"optimizer": {"type": "sgd", "nesterov": True}}}, "training.optimizer.nesterov", "momentum > 0"),
        ({"training": {"loss": "hinge"}}, "training.loss", "must be one of"),
        ({"training": {"loss": "cross_entropy"}}, "network.layers[1].activation", "softmax"),
        ({"training": {"validation_fraction": 0.95}}, "training.validation_fraction", "<= 0.9"),
        ({"training": {"lr_schedule": {"type": "step", "gamma": 2}}}, "training.lr_schedule.gamma", "<= 1"),
        ({"training": {"lr_schedule": {"type": "cosine"}}}, "training.lr_schedule.type", "must be one of"),
        ({"training": {"lr_schedule": 5}}, "training.lr_schedule", "null or an object"),
        ({"training": {"early_stopping": {"patience": 0}}}, "training.early_stopping.patience", ">= 1"),
        ({"training": {"algorithm": "perceptron"}}, "network.layers", "perceptron"),
        ({"training": {"shuffle": "yes"}}, "training.shuffle", "boolean"),
        ({"training": {"dtype": "float16"}}, "training.dtype", "must be one of"),
        ({"training": {"engine": "fast"}}, "training.engine", "must be one of"),
        ({"training": {"stats": 1}}, "training.stats", "boolean"),
        ({"training": {"speed": 11}}, "training.speed", "not a known field"),
        ({"training": []}, "training", "must be an object"),
        ({"network": _layers({**DENSE4, "activation": "step"}, OUT1)}, "network.layers[0].activation", "perceptron"),
        ({"dataset_id": "not-a-uuid"}, "dataset_id", "UUID"),
        ({"dataset_id": str(uuid.uuid4())}, "dataset_id", "no data set"),
        ({"dataset_id": 7}, "dataset_id", "string"),
        ({"init_from_run": "nope"}, "init_from_run", "UUID"),
        ({"init_from_run": str(uuid.uuid4())}, "init_from_run", "no run"),
        ({"initial_weights": {"layers": []}, "init_from_run": str(uuid.uuid4())}, "initial_weights", "not both"),
        ({"initial_weights": [1]}, "initial_weights", "null or an object"),
        ({"initial_weights": {"layers": [{"W": "x"}]}}, "initial_weights.layers[0].W", "must be an array"),
        ({"initial_weights": {}}, "initial_weights.layers", "is required"),
    ],
)
def test_bad_specs_name_the_field(client, changes: dict, path: str, message: str) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    body = _body(dataset["id"])
    training = changes.pop("training", None)
    if training is not None:
        body["training"] = {**XOR_TRAINING, **training} if isinstance(training, dict) else training
    body.update(changes)
    _422(client, body, path, message)


def test_required_fields(client) -> None:  # noqa: ANN001
    resp = client.post("/v1/runs", json={})
    assert set(problem_paths(resp)) == {"dataset_id", "network"}


def test_regression_output_and_loss(client) -> None:  # noqa: ANN001
    body = {"name": "r", "inputs": [[0], [1], [2], [3]], "targets": [[0, 1], [1, 2], [2, 3], [3, 4]]}
    dataset = client.post("/v1/datasets", json=body).get_json()
    base = {"dataset_id": dataset["id"], "network": _layers({"type": "dense", "units": 1})}
    _422(client, base, "network.layers[0].units", "2 columns")
    bad_loss = {**base, "network": _layers({"type": "dense", "units": 2}),
                "training": {"loss": "cross_entropy"}}
    _422(client, bad_loss, "training.loss", "regression")


def test_too_few_samples_for_the_split(client) -> None:  # noqa: ANN001
    dataset = client.post("/v1/datasets", json={
        "name": "t", "inputs": [[0, 0], [0, 1], [1, 0], [1, 1]], "targets": [0, 1, 1, 0]}).get_json()
    _422(client, _body(dataset["id"], training={"validation_fraction": 0.9}),
         "training.validation_fraction", "no training sample")


# ---- initial weights -----------------------------------------------------------------------

def _weights(w0: np.ndarray, w1: np.ndarray) -> dict:
    return {"layers": [{"W": w0.tolist(), "b": [0.0] * w0.shape[1]},
                       {"W": w1.tolist(), "b": [0.0] * w1.shape[1]}]}


def test_initial_weights_are_stored_as_the_initial_artifact(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    weights = _weights(np.full((2, 4), 0.25), np.full((4, 1), -0.5))
    run = create_run(any_client, dataset["id"], initial_weights=weights)
    with db.session_scope(any_app) as session:
        artifact = session.get(Artifact, (run["id"], "initial"))
        assert artifact.epoch == 0
        model = nn.Model.from_npz(artifact.data)
    assert model.network == run["network"]
    assert nn.weights_to_json(model.weights) == weights
    served = any_client.get(f"/v1/runs/{run['id']}/weights?which=initial").get_json()
    assert served["layers"] == weights["layers"] and served["epoch"] == 0


@pytest.mark.parametrize(
    ("weights", "path", "message"),
    [
        (_weights(np.zeros((3, 4)), np.zeros((4, 1))), "initial_weights.layers[0].W", "shape (2, 4)"),
        (_weights(np.zeros((2, 4)), np.zeros((4, 2))), "initial_weights.layers[1].W", "shape (4, 1)"),
        ({"layers": [{"W": [[0.0] * 4] * 2, "b": [0.0] * 4}]}, "initial_weights.layers", "2 layer"),
        ({"layers": [{"W": [[0.0] * 4] * 2}, {"W": [[0.0]] * 4, "b": [0.0]}]}, "initial_weights.layers[0]", "W, b"),
        ({"layers": [{"W": [[0.0] * 4, [0.0] * 3], "b": [0.0] * 4}, {"W": [[0.0]] * 4, "b": [0.0]}]}, "initial_weights.layers[0].W", "rectangular"),
        ({"layers": [{"W": [[0.0] * 4] * 2, "b": [True] * 4}, {"W": [[0.0]] * 4, "b": [0.0]}]}, "initial_weights.layers[0].b[0]", "must be a number"),
    ],
)
def test_bad_initial_weights(client, weights: dict, path: str, message: str) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    _422(client, _body(dataset["id"], initial_weights=weights), path, message)


def test_a_weights_response_can_be_posted_back(app: Flask, client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    source = create_run(client, dataset["id"])
    finish_run(app, source["id"], artifacts={"final": trained_model(source).to_npz()})
    served = client.get(f"/v1/runs/{source['id']}/weights").get_json()
    run = create_run(client, dataset["id"], initial_weights=served)
    again = client.get(f"/v1/runs/{run['id']}/weights?which=initial").get_json()
    assert again["layers"] == served["layers"]


def test_init_from_run(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    source = create_run(any_client, dataset["id"])
    _422(any_client, _body(dataset["id"], init_from_run=source["id"]), "init_from_run",
         "no final weights (it is queued)")
    model = trained_model(source)
    finish_run(any_app, source["id"], artifacts={"final": model.to_npz()})
    run = create_run(any_client, dataset["id"], init_from_run=source["id"])
    assert run["init_from_run"] == source["id"]
    initial = any_client.get(f"/v1/runs/{run['id']}/weights?which=initial").get_json()
    assert initial["layers"] == nn.weights_to_json(model.weights)["layers"]
    wider = _body(dataset["id"], init_from_run=source["id"],
                  network=_layers({"type": "dense", "units": 5}, OUT1))
    _422(any_client, wider, "init_from_run.layers[0].W", "shape (2, 5)")


def test_init_from_run_racing_its_delete_is_422(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    source = create_run(any_client, dataset["id"])
    finish_run(any_app, source["id"], artifacts={"final": trained_model(source).to_npz()})
    creator = any_app.test_client()
    body = _body(dataset["id"], init_from_run=source["id"])
    with paused(any_app, "FROM artifacts", lambda: creator.post("/v1/runs", json=body)) \
            as answer:  # the source's final weights found, their bytes read next
        assert any_client.delete(f"/v1/runs/{source['id']}").status_code == 204
    assert problem_paths(answer[0]) == ["init_from_run"]
    assert "no run with this id" in answer[0].get_json()["detail"]


# ---- listing ---------------------------------------------------------------------------------

def test_list_filters(any_app: Flask, any_client) -> None:  # noqa: ANN001
    first, second = create_xor_dataset(any_client), create_xor_dataset(any_client)
    a = create_run(any_client, first["id"])
    b = create_run(any_client, first["id"])
    c = create_run(any_client, second["id"])
    set_status(any_app, b["id"], "running")
    set_status(any_app, c["id"], "failed")

    def ids(query: str) -> list[str]:
        resp = any_client.get(f"/v1/runs{query}")
        assert resp.status_code == 200
        return [r["id"] for r in resp.get_json()["items"]]

    assert ids("") == [c["id"], b["id"], a["id"]]
    assert ids("?status=queued") == [a["id"]]
    assert ids("?status=queued,running") == [b["id"], a["id"]]
    assert ids(f"?dataset_id={first['id']}") == [b["id"], a["id"]]
    assert ids(f"?dataset_id={first['id']}&status=failed") == []
    assert ids(f"?dataset_id={first['id'].upper()}") == [b["id"], a["id"]]
    page = any_client.get("/v1/runs?limit=2").get_json()
    rest = any_client.get(f"/v1/runs?limit=2&cursor={page['next_cursor']}").get_json()
    assert [r["id"] for r in page["items"] + rest["items"]] == [c["id"], b["id"], a["id"]]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "path"),
    [("status=done", "query.status"), ("status=queued,bogus", "query.status"),
     ("dataset_id=nope", "query.dataset_id"), ("limit=-1", "query.limit"),
     ("cursor=abc", "query.cursor")],
)
def test_list_bad_parameters(client, query: str, path: str) -> None:  # noqa: ANN001
    resp = client.get(f"/v1/runs?{query}")
    assert resp.status_code == 422 and problem_paths(resp) == [path]


# ---- waiting for a run -------------------------------------------------------------------------

def test_get_with_wait_answers_when_the_run_finishes(any_app: Flask, any_client) -> None:  # noqa: ANN001
    """Queued when asked; another thread (a worker's final transaction) finishes it while
    the request waits, and the answer is the finished run. Meanwhile the waiting request
    holds no pooled connection between its reads."""
    run = create_run(any_client, create_xor_dataset(any_client)["id"])
    pool = db.engine(any_app).pool
    held: list[int] = []

    def finish() -> None:
        for _ in range(10):
            time.sleep(0.05)
            held.append(pool.checkedout())
        finish_run(any_app, run["id"], epochs=3, status="failed")

    worker = threading.Thread(target=finish)
    worker.start()
    resp = any_client.get(f"/v1/runs/{run['id']}?wait=30")
    worker.join()
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "failed" and body["epochs_completed"] == 3
    assert 0 in held                          # a read every 0.25 s, no connection in between


def test_get_with_wait_answers_when_the_time_passes(any_client) -> None:  # noqa: ANN001
    run = create_run(any_client, create_xor_dataset(any_client)["id"])
    resp = any_client.get(f"/v1/runs/{run['id']}?wait=1")
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"
    cancelled = any_client.post(f"/v1/runs/{run['id']}/cancel").get_json()
    assert any_client.get(f"/v1/runs/{run['id']}?wait=60").get_json() == cancelled  # at once


@pytest.mark.parametrize("wait", ["61", "-1", "1.5", "soon", ""])
def test_get_with_a_bad_wait_is_422(client, wait: str) -> None:  # noqa: ANN001
    run = create_run(client, create_xor_dataset(client)["id"])
    resp = client.get(f"/v1/runs/{run['id']}?wait={wait}")
    assert resp.status_code == 422 and problem_paths(resp) == ["query.wait"]


# ---- cancel and delete ---------------------------------------------------------------------------

def test_cancel_queued_is_immediate_and_idempotent(any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    resp = any_client.post(f"/v1/runs/{run['id']}/cancel")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "cancelled" and body["cancel_requested"] is True
    assert body["finished_at"] is not None and body["error"] is None and body["progress"] == 0
    again = any_client.post(f"/v1/runs/{run['id']}/cancel")
    assert again.status_code == 200 and again.get_json() == body


def test_cancel_running_asks_the_worker(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    set_status(any_app, run["id"], "running")
    body = any_client.post(f"/v1/runs/{run['id']}/cancel").get_json()
    assert body["status"] == "cancelling" and body["cancel_requested"] is True
    assert body["finished_at"] is None
    assert any_client.post(f"/v1/runs/{run['id']}/cancel").get_json()["status"] == "cancelling"
    assert any_client.delete(f"/v1/runs/{run['id']}").status_code == 409


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_cancel_finished_is_409(app: Flask, client, status: str) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    set_status(app, run["id"], status)
    resp = client.post(f"/v1/runs/{run['id']}/cancel")
    assert resp.status_code == 409
    assert resp.get_json()["code"] == "run_finished" and resp.get_json()["status_now"] == status


def test_cancel_never_overwrites_a_concurrent_claim(app: Flask, client, monkeypatch) -> None:  # noqa: ANN001
    """A worker claims the run between the API's read and its write: the CAS sees it."""
    import service.api.runs as runs_api

    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    original = runs_api.sa.update
    claimed = []

    def update_after_claim(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not claimed:
            claimed.append(True)
            set_status(app, run["id"], "running")  # the worker won the race
        return original(*args, **kwargs)

    monkeypatch.setattr(runs_api.sa, "update", update_after_claim)
    body = client.post(f"/v1/runs/{run['id']}/cancel").get_json()
    assert body["status"] == "cancelling"  # not "cancelled": the claim was not overwritten


def test_pin_and_unpin(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    assert run["pinned"] is False
    url = f"/v1/runs/{run['id']}"
    for pinned in (True, True, False):
        resp = any_client.patch(url, json={"pinned": pinned})
        assert resp.status_code == 200 and resp.get_json()["pinned"] is pinned
        assert {k: v for k, v in resp.get_json().items() if k != "pinned"} == {
            k: v for k, v in run.items() if k not in ("pinned", "estimate")}  # nothing else
    finish_run(any_app, run["id"])
    assert any_client.patch(url, json={"pinned": True}).get_json()["status"] == "succeeded"
    assert any_client.get(url).get_json()["pinned"] is True
    missing = any_client.patch(f"/v1/runs/{uuid.uuid4()}", json={"pinned": True})
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_found"


@pytest.mark.parametrize(("body", "path"), [
    ({}, ""), ({"pinned": "yes"}, "pinned"), ({"pinned": None}, "pinned"),
    ({"status": "succeeded"}, "status"), ({"pinned": True, "epochs_total": 3}, "epochs_total"),
])
def test_patch_refuses_what_it_cannot_set(client, body: dict, path: str) -> None:  # noqa: ANN001
    run = create_run(client, create_xor_dataset(client)["id"])
    resp = client.patch(f"/v1/runs/{run['id']}", json=body)
    assert resp.status_code == 422 and problem_paths(resp) == [path], resp.get_json()
    run.pop("estimate")  # the 202's alone
    assert client.get(f"/v1/runs/{run['id']}").get_json() == run


# ---- names and tags ----------------------------------------------------------------------------

def test_name_and_tags_are_stored_returned_and_patched(any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    tags = {"team": "search", "lr": "0.5", "k8s.io/app": "trainer", "empty": ""}
    run = create_run(any_client, dataset["id"], name="xor baseline", tags=tags)
    assert (run["name"], run["tags"]) == ("xor baseline", tags)
    url = f"/v1/runs/{run['id']}"
    assert any_client.get(url).get_json()["tags"] == tags
    unnamed = create_run(any_client, dataset["id"])
    assert (unnamed["name"], unnamed["tags"]) == (None, {})

    changed = any_client.patch(url, json={"tags": {"lr": "0.1", "empty": None, "new": "x"}})
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["tags"] == {"team": "search", "lr": "0.1", "k8s.io/app": "trainer",
                                          "new": "x"}  # merged: the others stay
    assert changed.get_json()["name"] == "xor baseline"
    renamed = any_client.patch(url, json={"name": "xor, reviewed", "pinned": True}).get_json()
    assert (renamed["name"], renamed["pinned"], renamed["tags"]) == (
        "xor, reviewed", True, changed.get_json()["tags"])
    cleared = any_client.patch(url, json={"name": None, "tags": None}).get_json()
    assert (cleared["name"], cleared["tags"]) == (None, {})
    assert any_client.get(url).get_json() == cleared


def test_at_most_50_tags_after_a_patch(client) -> None:  # noqa: ANN001
    fifty = {f"k{i}": "v" for i in range(50)}
    run = create_run(client, create_xor_dataset(client)["id"], tags=fifty)
    url = f"/v1/runs/{run['id']}"
    resp = client.patch(url, json={"tags": {"one-more": "v"}})
    assert resp.status_code == 422 and problem_paths(resp) == ["tags"]
    assert "51 tags" in resp.get_json()["errors"][0]["message"]
    swapped = client.patch(url, json={"tags": {"one-more": "v", "k0": None}})
    assert swapped.status_code == 200 and len(swapped.get_json()["tags"]) == 50
    assert "k0" not in swapped.get_json()["tags"]


def test_concurrent_tag_patches_both_land(any_app: Flask, any_client) -> None:  # noqa: ANN001
    """The merge reads the tags with the row locked: a PATCH made meanwhile waits for it
    instead of overwriting it with what it read before."""
    run = create_run(any_client, create_xor_dataset(any_client)["id"], tags={"a": "1"})
    url = f"/v1/runs/{run['id']}"
    other = any_app.test_client()
    second: list = []
    with paused(any_app, "SELECT runs.tags", lambda: other.patch(url, json={"tags": {"b": "2"}})):
        thread = threading.Thread(
            target=lambda: second.append(any_client.patch(url, json={"tags": {"c": "3"}})))
        thread.start()
        time.sleep(0.3)  # the second PATCH is waiting for the first's lock
    thread.join(30)
    assert second[0].status_code == 200
    assert any_client.get(url).get_json()["tags"] == {"a": "1", "b": "2", "c": "3"}


@pytest.mark.parametrize(("changes", "path"), [
    ({"name": ""}, "name"), ({"name": "x" * 201}, "name"), ({"name": 3}, "name"),
    ({"tags": ["a"]}, "tags"), ({"tags": {"a": 1}}, "tags.a"),
    ({"tags": {"a": "v" * 501}}, "tags.a"), ({"tags": {"a": None}}, "tags.a"),
    ({"tags": {"bad key": "v"}}, 'tags["bad key"]'), ({"tags": {"k:v": "v"}}, 'tags["k:v"]'),
    ({"tags": {"": "v"}}, 'tags[""]'), ({"tags": {"k" * 101: "v"}}, f"tags.{'k' * 100}"),
    ({"tags": {f"k{i}": "v" for i in range(51)}}, "tags"),
])
def test_bad_names_and_tags_name_the_field(client, changes: dict, path: str) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    resp = client.post("/v1/runs", json=_body(dataset["id"], **changes))
    assert resp.status_code == 422 and problem_paths(resp) == [path], resp.get_json()
    if changes.get("tags") == {"a": None}:
        return  # a null tag is how a PATCH removes one
    run = create_run(client, dataset["id"])
    resp = client.patch(f"/v1/runs/{run['id']}", json=changes)
    assert resp.status_code == 422 and problem_paths(resp) == [path], resp.get_json()


def test_list_by_name_tags_and_creation_time(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    a = create_run(any_client, dataset["id"], name="sweep", tags={"team": "search", "lr": "0.5"})
    b = create_run(any_client, dataset["id"], name="sweep", tags={"team": "search", "lr": "0.1"})
    c = create_run(any_client, dataset["id"], name="other",
                   tags={"team": "ads", "url": "http://x:1"})
    with db.session_scope(any_app) as session:  # one a day apart, a second run at the same time
        for run, when in ((a, "2026-12-01T10:00:00+00:00"), (b, "2026-12-02T10:00:00+00:00"),
                          (c, "2026-12-02T10:00:00+00:00")):
            session.get(Run, run["id"]).created_at = datetime.fromisoformat(when)

    def ids(query: str) -> list[str]:
        resp = any_client.get(f"/v1/runs?{query}")
        assert resp.status_code == 200, resp.get_json()
        return [r["id"] for r in resp.get_json()["items"]]

    order = sorted([b["id"], c["id"]], reverse=True)
    assert ids("name=sweep") == [b["id"], a["id"]]
    assert ids("name=swee") == []
    assert ids("tag=team:search") == [b["id"], a["id"]]
    assert ids("tag=team:search&tag=lr:0.5") == [a["id"]]
    assert ids("tag=team:search&tag=lr:0.2") == []
    assert ids("tag=url:http://x:1") == [c["id"]]  # the value may hold colons
    assert ids("tag=team:") == []
    assert ids("tag=nokey:search") == []
    assert ids("created_after=2026-12-02T10:00:00Z") == order  # at or after
    assert ids("created_before=2026-12-02T10:00:00Z") == [a["id"]]  # strictly before
    assert ids("created_after=2026-12-02T11:00:00%2B01:00") == order  # the same instant
    assert ids("created_after=2026-12-01T00:00:00Z&created_before=2026-12-02T00:00:00.5z"
               ) == [a["id"]]
    assert ids("name=sweep&created_after=2026-12-02T00:00:00.1234567Z&tag=lr:0.1") == [b["id"]]
    page = any_client.get("/v1/runs?tag=team:search&limit=1").get_json()
    rest = any_client.get(f"/v1/runs?tag=team:search&limit=1&cursor={page['next_cursor']}")
    assert [r["id"] for r in page["items"] + rest.get_json()["items"]] == [b["id"], a["id"]]


@pytest.mark.parametrize(("query", "path"), [
    ("tag=team", "query.tag"), ("tag=:v", "query.tag"), ("tag=bad key:v", "query.tag"),
    ("tag=a:1&tag=b", "query.tag"), (f"tag={'k' * 101}:v", "query.tag"),
    (f"tag=k:{'v' * 501}", "query.tag"), ("name=", "query.name"),
    (f"name={'n' * 201}", "query.name"),
    ("created_after=2026-12-02", "query.created_after"),
    ("created_after=2026-12-02T10:00:00", "query.created_after"),
    ("created_before=2026-13-02T10:00:00Z", "query.created_before"),
    ("created_before=yesterday", "query.created_before"),
])
def test_list_bad_tag_and_time_filters(client, query: str, path: str) -> None:  # noqa: ANN001
    resp = client.get(f"/v1/runs?{query}")
    assert resp.status_code == 422 and problem_paths(resp) == [path], resp.get_json()


@pytest.mark.parametrize("status", ["queued", "running", "cancelling"])
def test_delete_active_is_409(app: Flask, client, status: str) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    set_status(app, run["id"], status)
    resp = client.delete(f"/v1/runs/{run['id']}")
    assert resp.status_code == 409
    assert resp.get_json()["code"] == "run_active" and resp.get_json()["status_now"] == status


def test_delete_cascades(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    finish_run(any_app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    assert any_client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert any_client.get(f"/v1/runs/{run['id']}").status_code == 404
    with db.engine(any_app).connect() as conn:
        for table in ("epochs", "epoch_stats", "artifacts"):
            assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0, table


def test_progress_and_finished_fields(app: Flask, client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=250)
    body = client.get(f"/v1/runs/{run['id']}").get_json()
    assert body["progress"] == 0.25 and body["status"] == "succeeded"
    assert body["metrics"]["best_epoch"] == 250 and body["attempts"] == 1
    zero = create_run(client, dataset["id"], training={**XOR_TRAINING, "epochs": 0})
    assert zero["progress"] == 0.0
    finish_run(app, zero["id"], epochs=0)
    assert client.get(f"/v1/runs/{zero['id']}").get_json()["progress"] == 1.0


def test_failed_run_error_and_non_finite_metrics(app: Flask, client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    with db.session_scope(app) as session:
        row = session.get(Run, run["id"])
        row.status, row.error_code, row.error_message = "failed", "diverged", "loss became inf"
        row.metrics = {"train_loss": float("inf"), "val_loss": None}
    body = client.get(f"/v1/runs/{run['id']}").get_json()
    assert body["error"] == {"code": "diverged", "message": "loss became inf"}
    assert body["metrics"] == {"train_loss": None, "val_loss": None}


def test_dataset_deleted_while_the_run_is_created(app: Flask, client, monkeypatch) -> None:  # noqa: ANN001
    import service.api.runs as runs_api

    dataset = create_xor_dataset(client)
    build = runs_api._plan  # noqa: SLF001

    def plan_then_delete(session, dataset_id, body):  # noqa: ANN001, ANN202
        plan = build(session, dataset_id, body)
        with db.engine(app).begin() as conn:  # another request deletes the data set
            conn.execute(sa.text("DELETE FROM datasets WHERE id = :id"), {"id": dataset_id})
        return plan

    monkeypatch.setattr(runs_api, "_plan", plan_then_delete)
    _422(client, _body(dataset["id"]), "dataset_id", "no data set")
