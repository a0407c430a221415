"""Task seq2seq through the API, on SQLite and PostgreSQL, its worker called in-process:
token rows of different lengths uploaded (JSON, padded; NPZ) or generated, an
encoder-decoder run trained, its epoch rows with exact match, and decoding by predict
(greedy, beam, attention); bad fields are 422s naming them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask import Flask

from nn.seq2seq import EOS, PAD
from tests.service.helpers import (
    create_run,
    create_xor_dataset,
    finish_run,
    multipart,
    npz_bytes,
    problem_paths,
    seq2seq_network,
    trained_model,
)
from tests.service.test_events import _events
from worker.training import train_run

VOCAB = 8  # ids 0..7: PAD, BOS, EOS and the symbols 3..7
NETWORK = seq2seq_network(VOCAB, dim=8, heads=2, ff_units=16)
TRAINING = {"loss": "cross_entropy", "optimizer": {"type": "adam", "learning_rate": 0.01},
            "batch_size": 16, "epochs": 3, "seed": 1, "validation_fraction": 0.25}
REVERSE = {"kind": "reverse", "n_samples": 64, "length": 5, "vocab_size": VOCAB, "seed": 1}


def _post(client: Any, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    resp = client.post("/v1/datasets", json=body)
    assert resp.status_code == expect, resp.get_json()
    return resp.get_json()


def _rows(client: Any, dataset_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/datasets/{dataset_id}/samples?limit=100").get_json()["items"]


# ---- upload ---------------------------------------------------------------------------------

def test_json_rows_of_different_lengths_are_padded(any_client: Any) -> None:
    """Rows of 3, 2 and 4 tokens: stored right-padded with PAD; a target row without EOS
    gets one, a row with its own trailing PAD loses it first."""
    made = _post(any_client, {"name": "rows", "task": "seq2seq",
                              "inputs": [[5, 7, 3], [4, 6], [3, 3, 3, 3, PAD]],
                              "targets": [[3, 7, 5], [6, 4, EOS], [3, 3, 3, 3, PAD]]})
    assert (made["task"], made["n_samples"], made["input_shape"]) == ("seq2seq", 3, [4])
    assert made["source"] == {"kind": "json"}
    rows = _rows(any_client, made["id"])
    assert [r["input"] for r in rows] == [[5, 7, 3, 0], [4, 6, 0, 0], [3, 3, 3, 3]]
    assert [r["target"] for r in rows] == [[3, 7, 5, EOS, 0], [6, 4, EOS, 0, 0],
                                           [3, 3, 3, 3, EOS]]


def test_the_generators_give_seq2seq_data(any_client: Any) -> None:
    made = _post(any_client, {"name": "rev", "generator": REVERSE})
    assert (made["task"], made["n_samples"]) == ("seq2seq", 64)
    assert made["source"]["generator"]["kind"] == "reverse"
    for row in _rows(any_client, made["id"]):
        source = [int(v) for v in row["input"] if v != PAD]
        target = [v for v in row["target"] if v != PAD]
        assert 2 <= len(source) <= 5 and all(3 <= v < VOCAB for v in source)
        assert target == source[::-1] + [EOS]
    for kind, expected in (("sort", sorted), ("copy", list)):
        made = _post(any_client, {"name": kind, "generator": {**REVERSE, "kind": kind}})
        row = _rows(any_client, made["id"])[0]
        source = [int(v) for v in row["input"] if v != PAD]
        assert [v for v in row["target"] if v != PAD] == expected(source) + [EOS]


def test_an_npz_of_padded_arrays(any_client: Any) -> None:
    inputs = np.array([[5, 7, 3], [4, 6, 0]])
    targets = np.array([[3, 7, 5, EOS], [6, 4, EOS, 0]])
    resp = any_client.post("/v1/datasets", data=multipart(
        {"name": "npz", "task": "seq2seq"}, npz_bytes(inputs=inputs, targets=targets),
        "pairs.npz"), content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    assert [r["target"] for r in _rows(any_client, resp.get_json()["id"])] == targets.tolist()
    gap = np.array([[5, 0, 3], [4, 6, 0]])
    resp = any_client.post("/v1/datasets", data=multipart(
        {"name": "npz", "task": "seq2seq"}, npz_bytes(inputs=gap, targets=targets),
        "pairs.npz"), content_type="multipart/form-data")
    assert resp.status_code == 422 and problem_paths(resp) == ["file"]
    assert "inputs[0]" in resp.get_json()["detail"]
    resp = any_client.post("/v1/datasets", data=multipart(
        {"name": "csv", "task": "seq2seq", "file": "a,b\n3,4\n"}),
        content_type="multipart/form-data")
    assert resp.status_code == 422 and problem_paths(resp) == ["task"]


ROWS = {"inputs": [[5, 7, 3], [4, 6]], "targets": [[3, 7, 5], [6, 4]]}


@pytest.mark.parametrize(("change", "path"), [
    ({"inputs": [[5, 7, 3], []]}, "inputs[1]"),                   # empty
    ({"inputs": [[5, 7, 3], [4, -6]]}, "inputs[1][1]"),           # not a token id
    ({"targets": [[3, 7.5, 5], [6, 4]]}, "targets[0][1]"),
    ({"inputs": [[5, 7, 3], [4, 6, 5, 7, 3, 4, 5]]}, "inputs[1]"),  # over DATASET_MAX_FEATURES
    ({"targets": [[3, 7, 5]]}, "targets"),                         # one row short
    ({"inputs": [[5, PAD, 3], [4, 6]]}, "inputs[0]"),              # PAD before a token
    ({"targets": [[3, EOS, 5], [6, 4]]}, "targets[0]"),            # EOS before the end
])
def test_bad_rows_are_422_naming_them(any_app: Flask, any_client: Any, change: dict,
                                      path: str) -> None:
    any_app.config["DATASET_MAX_FEATURES"] = 6
    resp = any_client.post("/v1/datasets", json={"name": "bad", "task": "seq2seq",
                                                 **ROWS, **change})
    assert resp.status_code == 422, resp.get_json()
    assert problem_paths(resp)[0] == path, resp.get_json()


def test_network_mismatches_are_422_naming_the_field(client: Any) -> None:
    dataset = _post(client, {"name": "rev", "generator": REVERSE})["id"]
    wrong_units = {**NETWORK, "decoder": {"layers": [*NETWORK["decoder"]["layers"][:3], {
        "type": "dense", "units": VOCAB + 1, "activation": "softmax"}]}}
    resp = client.post("/v1/runs", json={"dataset_id": dataset, "network": wrong_units,
                                         "training": TRAINING})
    assert resp.status_code == 422
    assert problem_paths(resp) == ["network.decoder.layers[3].units"], resp.get_json()
    both = {**NETWORK, "layers": NETWORK["decoder"]["layers"]}
    resp = client.post("/v1/runs", json={"dataset_id": dataset, "network": both,
                                         "training": TRAINING})
    assert resp.status_code == 422 and problem_paths(resp) == ["network.layers"]
    resp = client.post("/v1/runs", json={"dataset_id": dataset, "training": TRAINING,
                                         "network": {"encoder": NETWORK["encoder"]}})
    assert resp.status_code == 422 and problem_paths(resp) == ["network.decoder"]


# ---- training and decoding ------------------------------------------------------------------

@pytest.fixture
def trained(any_app: Flask, any_client: Any) -> dict[str, Any]:
    """A reverse data set and a seq2seq run on it, trained by the worker's task in-process."""
    dataset = _post(any_client, {"name": "rev", "generator": REVERSE})
    resp = any_client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": NETWORK,
                                             "training": TRAINING})
    assert resp.status_code == 202, resp.get_json()
    run = resp.get_json()
    with any_app.app_context():
        assert train_run(run["id"]) == "succeeded"
    return {"dataset": dataset, "run": run}


def test_a_run_trains_and_its_epochs_carry_exact_match(any_client: Any, trained: dict) -> None:
    run_id = trained["run"]["id"]
    rows = any_client.get(f"/v1/runs/{run_id}/epochs").get_json()["items"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert 0 <= row["train_exact_match"] <= row["train_accuracy"] <= 1
        assert 0 <= row["val_exact_match"] <= row["val_accuracy"] <= 1
    streamed = [e["data"] for e in _events(any_client, run_id) if e["event"] == "epoch"]
    assert [e["train_exact_match"] for e in streamed] == [r["train_exact_match"] for r in rows]
    names = {r["name"] for r in any_client.get(
        f"/v1/runs/{run_id}/layer-stats?limit=1000").get_json()["items"]}
    assert any(n.startswith("encoder.") for n in names)
    assert any(n.startswith("decoder.transformer_decoder") for n in names)


def test_predict_decodes(any_client: Any, trained: dict) -> None:
    run_id = trained["run"]["id"]
    inputs = [[5, 7, 3], [4, 6], [3, 4, 5, 6, 7]]
    greedy = any_client.post(f"/v1/runs/{run_id}/predict",
                             json={"inputs": inputs, "max_length": 7}).get_json()
    assert len(greedy["outputs"]) == len(greedy["scores"]) == 3, greedy
    for out, score in zip(greedy["outputs"], greedy["scores"]):
        assert len(out) <= 7 and all(3 <= v < VOCAB for v in out) and score <= 0
    beam = any_client.post(f"/v1/runs/{run_id}/predict",
                           json={"inputs": inputs, "max_length": 7, "beam_size": 3}).get_json()
    # beam search keeps the greedy path among its candidates: never a worse score
    assert all(b >= g - 1e-9 for b, g in zip(beam["scores"], greedy["scores"]))
    seen = any_client.post(f"/v1/runs/{run_id}/predict",
                           json={"inputs": inputs, "max_length": 7, "attention": True}).get_json()
    assert seen["outputs"] == greedy["outputs"] and "attention" not in greedy
    for source, out, maps in zip(inputs, seen["outputs"], seen["attention"]):
        weights = np.array(maps)  # (layer, head, target step, source position)
        assert weights.shape[:2] == (1, 2) and weights.shape[3] == len(source)
        assert weights.shape[2] in (len(out), len(out) + 1)  # the EOS step, if decoded
        np.testing.assert_allclose(weights.sum(axis=-1), 1, atol=1e-6)


@pytest.mark.parametrize(("body", "path"), [
    ({"inputs": [[5, 7.5]]}, "inputs[0][1]"),
    ({"inputs": [[5, EOS]]}, "inputs[0][1]"),        # symbols only
    ({"inputs": [[5, VOCAB]]}, "inputs[0]"),         # past the encoder's vocabulary
    ({"inputs": [[5, 6, 7, 3, 4, 5]]}, "inputs[0]"),  # longer than the training inputs
    ({"inputs": [[5], []]}, "inputs[1]"),
    ({"inputs": [[5]], "max_length": 0}, "max_length"),
    ({"inputs": [[5]], "beam_size": 17}, "beam_size"),
])
def test_predict_bad_fields_are_422(any_client: Any, trained: dict, body: dict,
                                    path: str) -> None:
    resp = any_client.post(f"/v1/runs/{trained['run']['id']}/predict", json=body)
    assert resp.status_code == 422 and problem_paths(resp)[0] == path, resp.get_json()


def test_predict_bounds_its_memory(any_app: Flask, any_client: Any, trained: dict) -> None:
    any_app.config["PREDICT_MAX_MEMORY_BYTES"] = 200_000
    url = f"/v1/runs/{trained['run']['id']}/predict"
    many = {"inputs": [[5, 7, 3]] * 500, "max_length": 20, "attention": True}
    resp = any_client.post(url, json=many)
    assert resp.status_code == 422 and problem_paths(resp) == ["inputs"]
    assert "send at most" in resp.get_json()["detail"]
    any_app.config["PREDICT_MAX_MEMORY_BYTES"] = 1000
    resp = any_client.post(url, json={"inputs": [[5, 7, 3]], "beam_size": 16})
    assert resp.status_code == 422 and problem_paths(resp) == ["beam_size"]
    assert "decoding one input takes about" in resp.get_json()["detail"]


def test_weights_are_served_but_not_as_onnx(any_client: Any, trained: dict) -> None:
    run_id = trained["run"]["id"]
    layers = any_client.get(f"/v1/runs/{run_id}/weights").get_json()["layers"]
    assert len(layers) == 7  # both stacks, the encoder's first
    resp = any_client.get(f"/v1/runs/{run_id}/weights?format=onnx")
    assert resp.status_code == 406 and resp.get_json()["layer"] == "network.decoder"


def test_decoding_fields_are_for_seq2seq_runs_only(app: Flask, client: Any) -> None:
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    for field, value in (("max_length", 5), ("beam_size", 2), ("attention", True)):
        resp = client.post(f"/v1/runs/{run['id']}/predict",
                           json={"inputs": [[1.0, 1.0]], field: value})
        assert resp.status_code == 422 and problem_paths(resp) == [field]


def test_a_batch_prediction_job_refuses_a_seq2seq_run(any_client: Any, trained: dict) -> None:
    resp = any_client.post("/v1/predictions", json={"run_id": trained["run"]["id"],
                                                    "dataset_id": trained["dataset"]["id"]})
    assert resp.status_code == 422 and problem_paths(resp) == ["run_id"]
    assert "/predict" in resp.get_json()["detail"]
