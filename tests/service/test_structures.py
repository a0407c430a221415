"""The specialised structures through the API: images for a CNN, sequences for an RNN, token
sequences for a Transformer; N-dimensional samples, weights and predictions."""

from __future__ import annotations

import numpy as np
import pytest
from flask import Flask

import nn
from service import dataio, db
from service.models import Dataset
from tests.service.helpers import finish_run, problem_paths

CNN = {"layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1},
                  {"type": "maxpool2d"}, {"type": "flatten"},
                  {"type": "dense", "units": 10, "activation": "softmax"}]}
RNN = {"layers": [{"type": "rnn", "units": 4}, {"type": "dense", "units": 1}]}
TRANSFORMER = {"layers": [{"type": "embedding", "vocab_size": 8, "dim": 4},
                          {"type": "positional_encoding"},
                          {"type": "transformer_encoder", "heads": 2, "causal": True},
                          {"type": "dense", "units": 8, "activation": "softmax"}]}
SMALL = {"epochs": 2, "seed": 1, "batch_size": 8, "loss": "cross_entropy"}


def _generate(client, **generator) -> dict:  # noqa: ANN001
    resp = client.post("/v1/datasets", json={"name": generator["kind"], "generator": generator})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _train(app: Flask, client, dataset: dict, network: dict, training: dict) -> tuple[dict, nn.Model]:  # noqa: ANN001
    """Create the run through the API, train it here as a worker would, store the result."""
    resp = client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": network,
                                         "training": training})
    assert resp.status_code == 202, resp.get_json()
    run = resp.get_json()
    with db.session_scope(app) as session:
        inputs, targets = dataio.decode(session.get(Dataset, dataset["id"]).data)
    info = nn.describe(inputs, targets, dataset["task"])
    plan = nn.build(run["network"], run["training"], info)
    model = nn.train(plan, inputs, targets).model
    finish_run(app, run["id"], epochs=2, artifacts={"final": model.to_npz()}, layers=(0,))
    return run, model


def test_cnn_on_glyphs(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = _generate(any_client, kind="glyphs", n_samples=40, size=8, seed=1)
    assert dataset["input_shape"] == [8, 8] and dataset["classes"] == list(range(10))
    assert dataset["source"]["generator"] == {"kind": "glyphs", "n_samples": 40, "noise": 0,
                                              "seed": 1, "size": 8}
    run, model = _train(any_app, any_client, dataset, CNN, {**SMALL, "optimizer": {"type": "adam"}})
    assert run["network"]["layers"][0]["kernel_size"] == [3, 3]
    weights = any_client.get(f"/v1/runs/{run['id']}/weights").get_json()
    assert np.array(weights["layers"][0]["W"]).shape == (2, 1, 3, 3)  # (F, C, kh, kw)
    images = np.asarray(nn.generate("glyphs", 3, 0, 2, size=8)[0]).tolist()
    body = any_client.post(f"/v1/runs/{run['id']}/predict", json={"inputs": images}).get_json()
    assert body["labels"] == model.predict(np.array(images))["labels"]
    again = any_client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": CNN,
                                              "training": SMALL, "initial_weights": weights})
    assert again.status_code == 202, again.get_json()


def test_rnn_on_parity(app: Flask, client) -> None:  # noqa: ANN001
    dataset = _generate(client, kind="parity", n_samples=32, length=5, seed=1)
    assert dataset["input_shape"] == [5, 1]
    run, _ = _train(app, client, dataset, RNN, {"epochs": 2, "seed": 1})
    body = client.post(f"/v1/runs/{run['id']}/predict",
                       json={"inputs": [[[1], [0], [1], [1], [0]]]}).get_json()
    assert body["labels"][0] in (0, 1)
    # Sequences of one feature may leave out that axis of 1: the same answer.
    assert client.post(f"/v1/runs/{run['id']}/predict",
                       json={"inputs": [[1, 0, 1, 1, 0]]}).get_json() == body
    wrong = client.post(f"/v1/runs/{run['id']}/predict", json={"inputs": [[1, 0, 1, 1]]})
    assert wrong.status_code == 422 and problem_paths(wrong) == ["inputs"]


def test_transformer_on_next_token(app: Flask, client) -> None:  # noqa: ANN001
    dataset = _generate(client, kind="next_token", n_samples=64, length=6, vocab_size=8, seed=1)
    assert dataset["input_shape"] == [6] and dataset["classes"] == list(range(8))
    run, _ = _train(app, client, dataset, TRANSFORMER, {**SMALL, "optimizer": {"type": "adam"}})
    body = client.post(f"/v1/runs/{run['id']}/predict",
                       json={"inputs": [[0, 1, 2, 3, 4, 5]]}).get_json()
    assert np.array(body["labels"]).shape == (1, 6)  # a label per position
    assert np.array(body["probabilities"]).shape == (1, 6, 8)
    out_of_vocab = client.post(f"/v1/runs/{run['id']}/predict", json={"inputs": [[0, 1, 2, 3, 4, 9]]})
    assert out_of_vocab.status_code == 422 and problem_paths(out_of_vocab) == ["inputs"]


def test_labels_per_time_step_from_json(client) -> None:  # noqa: ANN001
    inputs = [[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]]
    targets = [[1, 2, 3], [2, 3, 0], [3, 0, 1], [0, 1, 2]]
    body = client.post("/v1/datasets", json={"name": "seq", "inputs": inputs, "targets": targets,
                                             "task": "classification"}).get_json()
    assert body["input_shape"] == [3] and body["classes"] == [0, 1, 2, 3]
    network = {"layers": [{"type": "embedding", "vocab_size": 3, "dim": 2},
                          {"type": "dense", "units": 4, "activation": "softmax"}]}
    resp = client.post("/v1/runs", json={"dataset_id": body["id"], "network": network,
                                         "training": {"loss": "cross_entropy"}})
    assert resp.status_code == 422
    assert problem_paths(resp) == ["network.layers[0].vocab_size"]


def test_images_from_json(app: Flask, client) -> None:  # noqa: ANN001
    images = np.arange(4 * 2 * 3 * 3, dtype=float).reshape(4, 2, 3, 3).tolist()
    body = client.post("/v1/datasets", json={"name": "img", "inputs": images,
                                             "targets": [0, 1, 0, 1]}).get_json()
    assert body["input_shape"] == [2, 3, 3]
    with db.session_scope(app) as session:
        stored, _ = dataio.decode(session.get(Dataset, body["id"]).data)
    assert stored.shape == (4, 2, 3, 3)


@pytest.mark.parametrize(
    ("inputs", "path", "message"),
    [
        ([[[1, 2], [3, 4]], [[1, 2], [3]]], "inputs[1][1]", "has 1 values but inputs[0][1] has 2"),
        ([[[1, 2], [3, 4]], [[1, 2], 3]], "inputs[1][1]", "must be an array like inputs[0][1]"),
        ([[[1, 2], [3, 4]], [1, 2]], "inputs[1][0]", "must be an array like inputs[0][0]"),
        ([[1, 2], [[1], 2]], "inputs[1][0]", "must be a number like inputs[0][0]"),
        ([[[[[1]]]]], "inputs[0][0][0][0]", "must be a number"),
        ([[[1, 10**400]]], "inputs[0]", "float64"),
    ],
)
def test_bad_samples_name_the_place(client, inputs: list, path: str, message: str) -> None:  # noqa: ANN001
    resp = client.post("/v1/datasets", json={"name": "x", "inputs": inputs, "targets": [0] * len(inputs)})
    assert resp.status_code == 422
    errors = {e["path"]: e["message"] for e in resp.get_json()["errors"]}
    assert message in errors[path], errors


@pytest.mark.parametrize(
    ("generator", "path"),
    [
        ({"kind": "glyphs", "size": 5}, "generator.size"),
        ({"kind": "glyphs", "size": 33}, "generator.size"),
        ({"kind": "parity", "length": 1}, "generator.length"),
        ({"kind": "next_token", "vocab_size": 2}, "generator.vocab_size"),
        ({"kind": "xor", "size": 8}, "generator.size"),
        ({"kind": "glyphs", "length": 8}, "generator.length"),
    ],
)
def test_generator_parameters(client, generator: dict, path: str) -> None:  # noqa: ANN001
    resp = client.post("/v1/datasets", json={"name": "g", "generator": generator})
    assert resp.status_code == 422 and problem_paths(resp) == [path], resp.get_json()


@pytest.mark.parametrize(
    ("network", "path"),
    [
        ({"layers": [{"type": "conv2d", "filters": 2}, {"type": "dense", "units": 10}]}, "network.layers[0].kernel_size"),
        ({"layers": [{"type": "conv2d", "filters": 2, "kernel_size": [3, 3, 3]}, {"type": "dense", "units": 10}]}, "network.layers[0].kernel_size"),
        ({"layers": [{"type": "conv2d", "filters": 2, "kernel_size": 9}, {"type": "flatten"}, {"type": "dense", "units": 10}]}, "network.layers[0].kernel_size"),
        ({"layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "dense", "units": 10}]}, "network.layers[1]"),
        ({"layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "sequence_pool"}, {"type": "dense", "units": 10}]}, "network.layers[1]"),
        ({"layers": [{"type": "flatten"}, {"type": "embedding", "vocab_size": 3, "dim": 2}, {"type": "dense", "units": 10}]}, "network.layers[1].type"),
        ({"layers": [{"type": "maxpool2d", "stride": 0}, {"type": "flatten"}, {"type": "dense", "units": 10}]}, "network.layers[0].stride"),
    ],
)
def test_structure_errors_name_the_field(client, network: dict, path: str) -> None:  # noqa: ANN001
    dataset = _generate(client, kind="glyphs", n_samples=20, size=8, seed=1)
    resp = client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": network})
    assert resp.status_code == 422, resp.get_json()
    assert path in problem_paths(resp), resp.get_json()


def test_pretraining_is_validated(client) -> None:  # noqa: ANN001
    dataset = _generate(client, kind="xor", n_samples=40, seed=1)
    network = {"layers": [{"type": "dense", "units": 4}, {"type": "dense", "units": 1}]}
    ok = client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": network,
                                       "training": {"pretrain": {"epochs": 3}}})
    assert ok.status_code == 202
    run = ok.get_json()
    assert run["training"]["pretrain"]["epochs"] == 3
    assert run["epochs_total"] == run["training"]["epochs"]
    bad = client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": network,
                                        "training": {"pretrain": {"epochs": 0}}})
    assert problem_paths(bad) == ["training.pretrain.epochs"]


@pytest.mark.parametrize(
    ("network", "generator", "inputs", "message"),
    [
        (CNN, {"kind": "glyphs", "size": 8}, np.zeros((1, 7, 7)), "shape (7, 7); the plan expects (8, 8)"),
        (CNN, {"kind": "glyphs", "size": 8}, np.zeros((2, 64)), "shape (64,); the plan expects (8, 8)"),
        (CNN, {"kind": "glyphs", "size": 8}, np.zeros((1, 1, 8, 8)), "shape (1, 8, 8)"),
        (RNN, {"kind": "parity", "length": 5}, np.zeros((1, 4, 1)), "shape (4, 1); the plan expects (5, 1)"),
        (TRANSFORMER, {"kind": "next_token", "length": 6, "vocab_size": 8}, np.zeros((1, 6, 1)),
         "shape (6, 1); the plan expects (6,)"),
        (TRANSFORMER, {"kind": "next_token", "length": 6, "vocab_size": 8}, np.full((1, 6), 0.5),
         "integer token ids in [0, 8)"),
    ],
    ids=["cnn-7x7", "cnn-flat", "cnn-channel", "rnn-short", "transformer-3d", "transformer-ids"],
)
def test_predict_with_the_wrong_shape_names_the_field(
    app: Flask, client, network: dict, generator: dict, inputs: np.ndarray, message: str,  # noqa: ANN001
) -> None:
    """Inputs the stored model cannot take are a 422 problem+json at `inputs`, never a 500."""
    dataset = _generate(client, n_samples=32, seed=1, **generator)
    training = {**SMALL, "epochs": 1} if network is not RNN else {"epochs": 1, "seed": 1}
    run, _ = _train(app, client, dataset, network, training)
    resp = client.post(f"/v1/runs/{run['id']}/predict", json={"inputs": inputs.tolist()})
    assert resp.status_code == 422 and problem_paths(resp) == ["inputs"], resp.get_json()
    assert message in resp.get_json()["errors"][0]["message"]
