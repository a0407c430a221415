"""Epochs, layer statistics, weights and predictions of a run (rows written as a worker would)."""

from __future__ import annotations

import io
import uuid

import numpy as np
import onnxruntime as ort
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

import nn
from service import db, onnx_export, statstore
from service.errors import size
from service.models import PARAM_STAT_FIELDS, STAT_FIELDS, Artifact, Epoch, EpochStats, Run
from service.pagination import evenly_spaced
from tests.service.helpers import (
    XOR_TRAINING,
    create_run,
    create_xor_dataset,
    finish_run,
    paused,
    problem_paths,
    set_status,
    trained_model,
)


@pytest.fixture
def run(app: Flask, client) -> dict:  # noqa: ANN001
    """A succeeded run with 10 epochs, stats for layers 0 and 1, and final weights."""
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=10, artifacts={"final": trained_model(run).to_npz()})
    return run


def _items(client, url: str) -> list[dict]:  # noqa: ANN001
    resp = client.get(url)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["items"]


def _all_pages(client, url: str, limit: int) -> tuple[list[dict], int]:  # noqa: ANN001
    rows, cursor, pages = [], None, 0
    sep = "&" if "?" in url else "?"
    while True:
        cursor_arg = f"&cursor={cursor}" if cursor else ""
        page = client.get(f"{url}{sep}limit={limit}{cursor_arg}").get_json()
        rows += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return rows, pages


# ---- downsampling rule -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("m", "n", "expected"),
    [
        (10, 20, list(range(10))),
        (10, 10, list(range(10))),
        (10, 2, [0, 9]),
        (10, 3, [0, 5, 9]),  # 4.5 rounds half up
        (10, 4, [0, 3, 6, 9]),
        (100, 5, [0, 25, 50, 74, 99]),
        (1, 2, [0]),
        (0, 5, []),
    ],
)
def test_evenly_spaced(m: int, n: int, expected: list[int]) -> None:
    assert evenly_spaced(list(range(m)), n) == expected


def test_evenly_spaced_properties() -> None:
    for m in range(1, 60):
        for n in range(2, 70):
            picked = evenly_spaced(list(range(m)), n)
            assert len(picked) == min(m, n)
            assert picked[0] == 0 and picked[-1] == m - 1
            assert picked == sorted(set(picked))


# ---- epochs ----------------------------------------------------------------------------------

def test_epochs(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    assert _items(any_client, f"/v1/runs/{run['id']}/epochs") == []  # queued: nothing yet
    finish_run(any_app, run["id"], epochs=10)
    rows = _items(any_client, f"/v1/runs/{run['id']}/epochs")
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    assert rows[0] == {"epoch": 1, "phase": "train", "layer": None, "train_loss": 1.0,
                       "val_loss": 1.5, "train_accuracy": 0.5, "val_accuracy": None,
                       "learning_rate": 0.5, "train_exact_match": None,
                       "val_exact_match": None, "duration_s": 0.01}
    url = f"/v1/runs/{run['id']}/epochs"
    assert [r["epoch"] for r in _items(any_client, f"{url}?from_epoch=3&to_epoch=5")] == [3, 4, 5]
    assert [r["epoch"] for r in _items(any_client, f"{url}?max_points=4")] == [1, 4, 7, 10]
    assert _items(any_client, f"{url}?phase=pretrain") == []
    rows, pages = _all_pages(any_client, url, 3)
    assert [r["epoch"] for r in rows] == list(range(1, 11)) and pages == 4


def test_epochs_downsampled_pages(app: Flask, client, run: dict) -> None:  # noqa: ANN001
    url = f"/v1/runs/{run['id']}/epochs?max_points=5&from_epoch=2"
    expected = [2 + i for i in evenly_spaced(list(range(9)), 5)]
    assert [r["epoch"] for r in _items(client, url)] == expected == [2, 4, 6, 8, 10]
    for limit in (1, 2, 3, 5):
        rows, _ = _all_pages(client, url, limit)
        assert [r["epoch"] for r in rows] == expected


def test_epochs_phases_are_ordered_and_downsampled_separately(app: Flask, client,  # noqa: ANN001
                                                              run: dict) -> None:
    with db.session_scope(app) as session:
        for e in range(1, 6):
            session.add(Epoch(run_seq=_seq(session, run["id"]), phase="pretrain", epoch=e,
                              layer=(e - 1) // 3, train_loss=0.1, duration_s=0.1))
    url = f"/v1/runs/{run['id']}/epochs"
    rows = _items(client, url)
    assert [(r["phase"], r["epoch"]) for r in rows[:6]] == (
        [("pretrain", e) for e in range(1, 6)] + [("train", 1)])
    assert [r["layer"] for r in rows[:6]] == [0, 0, 0, 1, 1, None]
    assert [r["phase"] for r in _items(client, f"{url}?phase=pretrain")] == ["pretrain"] * 5
    assert [r["phase"] for r in _items(client, f"{url}?phase=train")] == ["train"] * 10
    sampled = _items(client, f"{url}?max_points=2")
    assert [(r["phase"], r["epoch"]) for r in sampled] == [
        ("pretrain", 1), ("pretrain", 5), ("train", 1), ("train", 10)]
    assert [r["epoch"] for r in _items(client, f"{url}?phase=pretrain&max_points=3")] == [1, 3, 5]
    rows, _ = _all_pages(client, f"{url}?max_points=3", 1)
    assert len(rows) == 6


def test_non_finite_losses_are_null(app: Flask, client, run: dict) -> None:  # noqa: ANN001
    with db.session_scope(app) as session:
        session.add(Epoch(run_seq=_seq(session, run["id"]), phase="train", epoch=11,
                          train_loss=float("inf"), val_loss=float("nan"), duration_s=0.1))
    row = _items(client, f"/v1/runs/{run['id']}/epochs?from_epoch=11")[0]
    assert row["train_loss"] is None and row["val_loss"] is None


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("phase=test", "query.phase"),
        ("from_epoch=-1", "query.from_epoch"),
        ("from_epoch=x", "query.from_epoch"),
        ("to_epoch=99999999999999999999", "query.to_epoch"),
        ("from_epoch=5&to_epoch=4", "query.to_epoch"),
        ("max_points=1", "query.max_points"),
        ("max_points=100001", "query.max_points"),
        ("limit=0", "query.limit"),
        ("cursor=bad", "query.cursor"),
        ("cursor=WzEsMl0", "query.cursor"),
        ("cursor=WyJ6enoiLDFd", "query.cursor"),  # ["zzz", 1]: no such phase
        ("cursor=WyJ6enoiLDEsMF0", "query.cursor"),  # ["zzz", 1, 0]
    ],
)
def test_series_bad_parameters(client, run: dict, query: str, path: str) -> None:  # noqa: ANN001
    for resource in ("epochs", "layer-stats"):
        resp = client.get(f"/v1/runs/{run['id']}/{resource}?{query}")
        assert resp.status_code == 422 and problem_paths(resp) == [path], resp.get_json()


# ---- layer statistics ------------------------------------------------------------------------

def test_layer_stats(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    finish_run(any_app, run["id"], epochs=10)
    url = f"/v1/runs/{run['id']}/layer-stats"
    rows = _items(any_client, url)
    assert [(r["epoch"], r["layer"]) for r in rows[:3]] == [(1, 0), (1, 1), (2, 0)]
    assert len(rows) == 20
    first = rows[0]
    assert first["name"] == "dense_0" and first["phase"] == "train"
    assert first["grad_norm"] == 1.0 and first["act_dead_fraction"] is None
    assert [r["epoch"] for r in _items(any_client, f"{url}?layer=1")] == list(range(1, 11))
    sampled = _items(any_client, f"{url}?max_points=3")
    assert [(r["epoch"], r["layer"]) for r in sampled] == [(1, 0), (1, 1), (6, 0), (6, 1),
                                                           (10, 0), (10, 1)]
    one = _items(any_client, f"{url}?max_points=3&layer=0&from_epoch=2&to_epoch=4")
    assert [(r["epoch"], r["layer"]) for r in one] == [(2, 0), (3, 0), (4, 0)]
    rows, pages = _all_pages(any_client, f"{url}?max_points=3", 4)
    assert [(r["epoch"], r["layer"]) for r in rows] == [(r["epoch"], r["layer"]) for r in sampled]
    assert pages == 2
    assert _items(any_client, f"{url}?layer=7") == []


def test_layer_stats_bad_layer(client, run: dict) -> None:  # noqa: ANN001
    resp = client.get(f"/v1/runs/{run['id']}/layer-stats?layer=-1")
    assert resp.status_code == 422 and problem_paths(resp) == ["query.layer"]
    resp = client.get(f"/v1/runs/{run['id']}/layer-stats?detail=no")
    assert resp.status_code == 422 and problem_paths(resp) == ["query.detail"]


def _seq(session: Session, run_id: str) -> int:
    return session.get(Run, run_id).seq


def _stored_epochs(app: Flask) -> int:
    with db.session_scope(app) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(EpochStats))


def _recurrent_stats(app: Flask, run_id: str, epochs: int) -> None:
    """An lstm layer 0 (arrays Wx, Wh, b: not in name order) and a dense layer 1, per epoch,
    as a worker writes them; epoch e's numbers are e + the array's place / 10."""
    layers = ((0, "lstm_0", ("Wx", "Wh", "b")), (1, "dense_1", ("W", "b")))
    with db.session_scope(app) as session:
        for e in range(1, epochs + 1):
            rows = [{"layer": layer, "name": name, **dict.fromkeys(STAT_FIELDS, 1.0),
                     "grad_norm_by_time": [e, 0.5, None] if layer == 0 else None,
                     "params": [{"param": param, **dict.fromkeys(PARAM_STAT_FIELDS, e + i / 10),
                                 "grad_std": None} for i, param in enumerate(arrays)]}
                    for layer, name, arrays in layers]
            layout, figures = statstore.pack(rows)
            session.add(EpochStats(run_seq=_seq(session, run_id), phase="train", epoch=e,
                                   layout=layout, figures=figures))


def test_layer_stats_per_array_and_by_time(any_app: Flask, any_client) -> None:  # noqa: ANN001
    """Each row carries its arrays' statistics in the layer's order and, for a recurrent
    layer, the gradient norm by time step (non-finite numbers null); ?detail=false leaves
    both out; pages keep each row's arrays; deleting the run deletes them."""
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    _recurrent_stats(any_app, run["id"], epochs=3)
    url = f"/v1/runs/{run['id']}/layer-stats"
    rows = _items(any_client, url)
    assert [(r["epoch"], r["name"]) for r in rows[:2]] == [(1, "lstm_0"), (1, "dense_1")]
    lstm, dense = rows[2], rows[3]
    assert [p["param"] for p in lstm["params"]] == ["Wx", "Wh", "b"]
    assert [p["weight_norm"] for p in lstm["params"]] == [2.0, 2.1, 2.2]
    assert lstm["params"][0]["grad_std"] is None  # non-finite: stored as null
    assert lstm["grad_norm_by_time"] == [2, 0.5, None]
    assert [p["param"] for p in dense["params"]] == ["W", "b"]
    assert dense["grad_norm_by_time"] is None
    paged, _ = _all_pages(any_client, url, 1)
    assert paged == rows
    assert _items(any_client, f"{url}?layer=0&from_epoch=2&to_epoch=2") == [lstm]
    brief = _items(any_client, f"{url}?detail=false")
    assert [set(r) for r in brief] == [set(lstm) - {"params", "grad_norm_by_time"}] * 6
    assert brief[2] == {k: v for k, v in lstm.items() if k not in ("params", "grad_norm_by_time")}
    assert _items(any_client, f"{url}?max_points=2&layer=0&detail=true") == [rows[0], rows[4]]

    assert _stored_epochs(any_app) == 3  # an epoch's layers in one row
    set_status(any_app, run["id"], "succeeded")
    assert any_client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert _stored_epochs(any_app) == 0


def test_layer_stats_by_layer_across_layouts(any_app: Flask, any_client) -> None:  # noqa: ANN001
    """Pretraining epochs hold the one layer they pretrain (layer 0, then 1), training epochs
    all three: ?layer keeps the epochs holding it, ?max_points picks among those, and pages
    of any size, breaking epochs anywhere, add up to the whole."""
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    with db.session_scope(any_app) as session:
        for phase, epochs, layers in (("pretrain", 6, None), ("train", 4, (0, 1, 2))):
            for e in range(1, epochs + 1):
                rows = [{"layer": layer, "name": f"dense_{layer}", "grad_norm": e + layer / 10}
                        for layer in (layers or ((e - 1) // 3,))]
                layout, figures = statstore.pack(rows)
                session.add(EpochStats(run_seq=_seq(session, run["id"]), phase=phase, epoch=e,
                                       layout=layout, figures=figures))
    url = f"/v1/runs/{run['id']}/layer-stats"
    every = [(r["phase"], r["epoch"], r["layer"], r["grad_norm"]) for r in _items(any_client, url)]
    assert every[:6] == [("pretrain", e, (e - 1) // 3, e + (e - 1) // 3 / 10) for e in range(1, 7)]
    assert every[6:9] == [("train", 1, 0, 1.0), ("train", 1, 1, 1.1), ("train", 1, 2, 1.2)]
    assert len(every) == 6 + 4 * 3
    one = [(r["phase"], r["epoch"]) for r in _items(any_client, f"{url}?layer=1")]
    assert one == [("pretrain", 4), ("pretrain", 5), ("pretrain", 6)] + [
        ("train", e) for e in range(1, 5)]
    assert [r["epoch"] for r in _items(any_client, f"{url}?layer=1&phase=pretrain&max_points=2")
            ] == [4, 6]
    assert _items(any_client, f"{url}?layer=2&phase=pretrain") == []
    assert _items(any_client, f"{url}?layer=12") == []
    for limit in (1, 2, 4, 5):
        rows, _ = _all_pages(any_client, url, limit)
        assert [(r["phase"], r["epoch"], r["layer"], r["grad_norm"]) for r in rows] == every
        rows, _ = _all_pages(any_client, f"{url}?layer=1&max_points=3", limit)
        assert [(r["phase"], r["epoch"]) for r in rows] == [
            ("pretrain", 4), ("pretrain", 5), ("pretrain", 6), ("train", 1), ("train", 3),
            ("train", 4)]


# ---- weights -----------------------------------------------------------------------------------

def test_weights_json(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    resp = any_client.get(f"/v1/runs/{run['id']}/weights")
    assert resp.status_code == 404 and resp.get_json()["code"] == "weights_not_available"
    model = trained_model(run)
    finish_run(any_app, run["id"], epochs=3, artifacts={"final": model.to_npz()})
    body = any_client.get(f"/v1/runs/{run['id']}/weights").get_json()
    assert body["run_id"] == run["id"] and body["which"] == "final" and body["epoch"] == 3
    assert body["layers"] == nn.weights_to_json(model.weights)["layers"]
    assert np.array(body["layers"][0]["W"]).shape == (2, 4)  # (inputs, units)
    assert np.array(body["layers"][1]["b"]).shape == (1,)


def test_weights_npz_by_format_and_accept(app: Flask, client, run: dict) -> None:  # noqa: ANN001
    with db.session_scope(app) as session:
        stored = session.get(Artifact, (run["id"], "final")).data
    url = f"/v1/runs/{run['id']}/weights"
    by_format = client.get(f"{url}?format=npz")
    assert by_format.status_code == 200 and by_format.mimetype == "application/x-npz"
    assert by_format.get_data() == stored
    assert "attachment" in by_format.headers["Content-Disposition"]
    with np.load(io.BytesIO(by_format.get_data()), allow_pickle=False) as archive:
        assert "meta" in archive.files
    for accept, media in (("application/x-npz", "application/x-npz"),
                          ("application/octet-stream", "application/octet-stream"),
                          ("application/json;q=0.5, application/x-npz", "application/x-npz"),
                          ("*/*", "application/json"),
                          ("application/*", "application/json")):
        resp = client.get(url, headers={"Accept": accept})
        assert resp.status_code == 200 and resp.mimetype == media, accept
    assert client.get(f"{url}?format=json", headers={"Accept": "application/x-npz"}).is_json


def test_weights_as_files_of_one_type(app: Flask, client, run: dict) -> None:  # noqa: ANN001
    """weights.npz and weights.onnx: what ?format=npz and ?format=onnx answer, always as
    application/octet-stream (the one type a generated client reads as a file)."""
    url = f"/v1/runs/{run['id']}/weights"
    for suffix in ("npz", "onnx"):
        resp = client.get(f"{url}.{suffix}", headers={"Accept": "application/json"})
        assert resp.status_code == 200 and resp.mimetype == "application/octet-stream"
        assert resp.get_data() == client.get(f"{url}?format={suffix}").get_data()
        assert resp.headers["Content-Disposition"] == \
            f'attachment; filename="run-{run["id"]}-final.{suffix}"'
        missing = client.get(f"{url}.{suffix}?which=best")
        assert missing.status_code == 404 and missing.get_json()["code"] == \
            "weights_not_available"
        assert problem_paths(client.get(f"{url}.{suffix}?which=latest")) == ["query.which"]
        assert client.get(f"/v1/runs/{uuid.uuid4()}/weights.{suffix}").status_code == 404


def test_weights_not_acceptable(client, run: dict) -> None:  # noqa: ANN001
    resp = client.get(f"/v1/runs/{run['id']}/weights", headers={"Accept": "text/html"})
    assert resp.status_code == 406 and resp.get_json()["code"] == "not_acceptable"


def test_weights_onnx_answers_as_predict(any_app: Flask, any_client) -> None:  # noqa: ANN001
    """A trained, standardised run's ONNX model in onnxruntime: predict's outputs, to the
    float32 graph's rounding (tests/service/test_onnx_export.py: 1e-5)."""
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"],
                     training={**XOR_TRAINING, "standardize": True})
    url = f"/v1/runs/{run['id']}/weights"
    resp = any_client.get(url, headers={"Accept": "application/onnx"})
    assert resp.status_code == 404 and resp.get_json()["code"] == "weights_not_available"
    model = trained_model(run, epochs=20)
    assert model.meta["standardize"] is not None
    finish_run(any_app, run["id"], epochs=20, artifacts={"final": model.to_npz()})
    resp = any_client.get(url, headers={"Accept": "application/onnx"})
    assert resp.status_code == 200 and resp.mimetype == "application/onnx"
    assert resp.headers["Content-Disposition"] == \
        f'attachment; filename="run-{run["id"]}-final.onnx"'
    assert any_client.get(f"{url}?format=onnx").get_data() == resp.get_data()
    session = ort.InferenceSession(resp.get_data(), providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(0).normal(0, 1.5, (50, 2))
    (outputs,) = session.run(["outputs"], {"inputs": inputs.astype(np.float32)})
    expected = any_client.post(f"/v1/runs/{run['id']}/predict",
                               json={"inputs": inputs.tolist()}).get_json()["outputs"]
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["classes"] == "[0, 1]" and meta["task"] == "classification"


def test_weights_onnx_by_accept(client, run: dict) -> None:  # noqa: ANN001
    url = f"/v1/runs/{run['id']}/weights"
    for accept, media in (("application/onnx", "application/onnx"),
                          ("application/json;q=0.5, application/onnx", "application/onnx"),
                          ("application/onnx;q=0.5, application/json", "application/json")):
        resp = client.get(url, headers={"Accept": accept})
        assert resp.status_code == 200 and resp.mimetype == media, accept
    assert client.get(f"{url}?format=onnx", headers={"Accept": "application/json"}).mimetype \
        == "application/onnx"
    refused = client.get(url, headers={"Accept": "text/html"}).get_json()
    assert "application/onnx" in refused["detail"]


def test_weights_onnx_not_exportable_names_the_layer(
    client, run: dict, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """Every nn layer type exports today: a dense layer without its exporter stands in for
    a future type that would not."""
    monkeypatch.delitem(onnx_export.EXPORTERS, "dense")
    resp = client.get(f"/v1/runs/{run['id']}/weights?format=onnx")
    assert resp.status_code == 406
    problem = resp.get_json()
    assert problem["code"] == "not_exportable" and problem["layer"] == "network.layers[0]"
    assert problem["detail"].startswith("network.layers[0] (dense) has no ONNX export")


def test_weights_which(app: Flask, client, run: dict) -> None:  # noqa: ANN001
    url = f"/v1/runs/{run['id']}/weights"
    resp = client.get(f"{url}?which=best")
    assert resp.status_code == 404 and resp.get_json()["code"] == "weights_not_available"
    with db.session_scope(app) as session:
        session.add(Artifact(run_id=run["id"], kind="best", epoch=4,
                             data=trained_model(run, epochs=1).to_npz()))
    assert client.get(f"{url}?which=best").get_json()["epoch"] == 4
    bad = client.get(f"{url}?which=newest")
    assert bad.status_code == 422 and problem_paths(bad) == ["query.which"]
    assert problem_paths(client.get(f"{url}?format=csv")) == ["query.format"]


# ---- predict -----------------------------------------------------------------------------------

def test_predict(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    url = f"/v1/runs/{run['id']}/predict"
    resp = any_client.post(url, json={"inputs": [[1, 1]]})
    assert resp.status_code == 409 and resp.get_json()["code"] == "run_not_ready"
    model = trained_model(run)
    finish_run(any_app, run["id"], epochs=3, artifacts={"final": model.to_npz()})
    inputs = [[1, 1], [1, -1], [-2.5, 0.5]]
    body = any_client.post(url, json={"inputs": inputs}).get_json()
    expected = model.predict(np.array(inputs, dtype=float))
    assert body["outputs"] == expected["outputs"]
    assert body["labels"] == expected["labels"] and set(body["labels"]) <= {0, 1}
    assert body["probabilities"] == expected["probabilities"]
    assert body["run_id"] == run["id"] and body["which"] == "final" and body["epoch"] == 3


def _regression_run(app: Flask, client) -> dict:  # noqa: ANN001
    """A succeeded run of one linear unit, y = 10 x + 0.5, with final weights."""
    body = {"name": "r", "inputs": [[0.0], [1.0], [2.0], [3.0]], "targets": [0.5, 10.5, 20.5, 30.5]}
    dataset = client.post("/v1/datasets", json=body).get_json()
    spec = {"layers": [{"type": "dense", "units": 1, "activation": "linear"}]}
    run = create_run(client, dataset["id"], network=spec, training={"epochs": 0})
    plan = nn.build(run["network"], run["training"],
                    nn.describe(np.array(body["inputs"]), np.array(body["targets"])))
    weights = [{"W": np.array([[10.0]]), "b": np.array([0.5])}]
    model = nn.train(plan, np.array(body["inputs"]), np.array(body["targets"]),
                     initial_weights=weights).model
    finish_run(app, run["id"], epochs=2, artifacts={"final": model.to_npz()}, layers=(0,))
    return run


def test_predict_regression_has_no_labels(app: Flask, client) -> None:  # noqa: ANN001
    run = _regression_run(app, client)
    result = client.post(f"/v1/runs/{run['id']}/predict", json={"inputs": [[4.0]]}).get_json()
    assert len(result["outputs"]) == 1 and "labels" not in result


def test_predict_outputs_that_overflow_are_a_422(any_app: Flask, any_client) -> None:  # noqa: ANN001
    run = _regression_run(any_app, any_client)
    inputs = [[4.0], [1e308], [-1e308], [1.0]]
    resp = any_client.post(f"/v1/runs/{run['id']}/predict", json={"inputs": inputs})
    assert problem_paths(resp) == ["inputs"] and resp.status_code == 422
    assert "overflow (are not finite) for rows 1, 2:" in resp.get_json()["detail"]


@pytest.fixture
def conv_run(any_app: Flask) -> tuple[Flask, dict, nn.Model]:
    """An app whose predictions may take 256 KiB, and a succeeded run of a small CNN on 8 x 8
    glyphs (about 32 KiB per sample to compute)."""
    app = any_app
    app.config["PREDICT_MAX_MEMORY_BYTES"] = 256 * 1024
    client = app.test_client()
    generator = {"kind": "glyphs", "n_samples": 30, "seed": 1}
    dataset = client.post("/v1/datasets", json={"name": "g", "generator": generator}).get_json()
    network = {"layers": [{"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": 1},
                          {"type": "flatten"}, {"type": "dense", "units": 10,
                                                "activation": "softmax"}]}
    run = create_run(client, dataset["id"], network=network,
                     training={"loss": "cross_entropy", "epochs": 0})
    X, y = nn.generate(**{"n_samples": 30, **generator})
    model = nn.train(nn.build(run["network"], run["training"], nn.describe(X, y)), X, y).model
    finish_run(app, run["id"], epochs=0, artifacts={"final": model.to_npz()}, layers=(0, 2))
    return app, run, model


def test_predict_computes_within_its_memory_bound(conv_run, monkeypatch) -> None:  # noqa: ANN001
    app, run, model = conv_run
    sizes = []
    real = nn.Model.predict
    monkeypatch.setattr(nn.Model, "predict", lambda self, x, batch_size=None: (
        sizes.append(batch_size) or real(self, x, batch_size)))
    inputs = np.random.default_rng(2).normal(size=(40, 8, 8))
    resp = app.test_client().post(f"/v1/runs/{run['id']}/predict",
                                  json={"inputs": inputs.tolist()})
    assert resp.status_code == 200, resp.get_json()
    answer = 40 * model.result_values * 80
    assert sizes == [(256 * 1024 - answer) // model.sample_bytes] and 1 < sizes[0] < 40
    assert np.allclose(resp.get_json()["outputs"], real(model, inputs)["outputs"])


def test_predict_refuses_what_would_not_fit(conv_run) -> None:  # noqa: ANN001
    app, run, model = conv_run
    url = f"/v1/runs/{run['id']}/predict"
    app.config["PREDICT_MAX_MEMORY_BYTES"] = model.sample_bytes - 1
    resp = app.test_client().post(url, json={"inputs": [[[0] * 8] * 8]})
    assert problem_paths(resp) == ["inputs"]
    assert f"one sample of this model takes about {size(model.sample_bytes)} to compute; " \
        f"the limit is {size(model.sample_bytes - 1)} (PREDICT_MAX_MEMORY_BYTES)" \
        in resp.get_json()["detail"]
    app.config["PREDICT_MAX_MEMORY_BYTES"] = model.sample_bytes + 10 * model.result_values * 80
    resp = app.test_client().post(url, json={"inputs": [[[0] * 8] * 8] * 11})
    assert problem_paths(resp) == ["inputs"]
    assert "send at most 10 rows at a time" in resp.get_json()["detail"]
    assert app.test_client().post(url, json={"inputs": [[[0] * 8] * 8] * 10}).status_code == 200


def test_predict_uses_the_model_cache(app: Flask, client, run: dict) -> None:  # noqa: ANN001
    cache = app.extensions["model_cache"]
    url = f"/v1/runs/{run['id']}/predict"
    for _ in range(3):
        assert client.post(url, json={"inputs": [[0, 1]]}).status_code == 200
    assert (cache.misses, cache.hits) == (1, 2)
    with db.session_scope(app) as session:  # a rewritten artifact is a new cache key
        artifact = session.get(Artifact, (run["id"], "final"))
        artifact.epoch = 11
        artifact.data = trained_model(run, epochs=1).to_npz()
    body = client.post(url, json={"inputs": [[0, 1]]}).get_json()
    assert body["epoch"] == 11 and cache.misses == 2


def test_model_cache_is_bounded(sqlite_url: str) -> None:
    from service.artifacts import LRUCache

    cache = LRUCache(2)
    for key in ("a", "b", "a", "c"):
        cache.get(key, lambda key=key: key.upper())
    assert list(cache._items) == ["a", "c"]  # noqa: SLF001 - "b" was least recently used


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({}, "inputs", "is required"),
        ({"inputs": []}, "inputs", "must not be empty"),
        ({"inputs": [[1, 2], [3]]}, "inputs[1]", "has 1 values"),
        ({"inputs": [[1, 2, 3]]}, "inputs", "2 values"),
        ({"inputs": [[1, "2"]]}, "inputs[0][1]", "must be a number"),
        ({"inputs": [1, 2]}, "inputs[0]", "must be an array"),
        ({"inputs": [[1, 2]], "which": "checkpoint"}, "which", "must be one of"),
        ({"inputs": [[1, 2]], "extra": True}, "extra", "not a known field"),
        ({"inputs": [[1, 2]] * 10_001}, "inputs", "10001 samples; the limit is 10000"),
        # counted before the schema walks every value, so it is the only error
        ({"inputs": [["a"]] * 10_001, "x": 1}, "inputs", "10001 samples; the limit is 10000"),
        ({"inputs": [[0] * 100_001]}, "inputs[0]", "100001 values per sample; the limit is"),
    ],
)
def test_predict_bad_inputs(client, run: dict, body: dict, path: str, message: str) -> None:  # noqa: ANN001
    resp = client.post(f"/v1/runs/{run['id']}/predict", json=body)
    assert resp.status_code == 422, resp.get_json()
    errors = {e["path"]: e["message"] for e in resp.get_json()["errors"]}
    assert message in errors[path], errors
    if "the limit" in message:
        assert list(errors) == [path]


def test_predict_with_best_weights(app: Flask, client, run: dict) -> None:  # noqa: ANN001
    url = f"/v1/runs/{run['id']}/predict"
    assert client.post(url, json={"inputs": [[0, 1]], "which": "best"}).status_code == 409
    with db.session_scope(app) as session:
        session.add(Artifact(run_id=run["id"], kind="best", epoch=2,
                             data=trained_model(run, epochs=2).to_npz()))
    body = client.post(url, json={"inputs": [[0, 1]], "which": "best"}).get_json()
    assert body["which"] == "best" and body["epoch"] == 2


# ---- reads racing a delete -------------------------------------------------------------------

@pytest.mark.parametrize("query", ["?format=npz", "?format=json", "?format=onnx"])
def test_weights_racing_a_delete_are_404(any_app: Flask, query: str) -> None:
    """The run found (and for JSON its weights' identity), their bytes read next."""
    client = any_app.test_client()
    run = create_run(client, create_xor_dataset(client)["id"])
    finish_run(any_app, run["id"], artifacts={"final": trained_model(run).to_npz()})
    reader = any_app.test_client()
    with paused(any_app, "FROM runs",
                lambda: reader.get(f"/v1/runs/{run['id']}/weights{query}")) as answer:
        assert client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert answer[0].status_code == 404 and answer[0].get_json()["code"] == "not_found"


def test_predict_racing_a_delete_is_404(any_app: Flask) -> None:
    client = any_app.test_client()
    run = create_run(client, create_xor_dataset(client)["id"])
    finish_run(any_app, run["id"], artifacts={"final": trained_model(run).to_npz()})
    reader = any_app.test_client()
    url = f"/v1/runs/{run['id']}/predict"
    with paused(any_app, "FROM runs", lambda: reader.post(url, json={"inputs": [[0, 1]]})) \
            as answer:  # the run and its weights' identity read, the weights not yet loaded
        assert client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert answer[0].status_code == 404 and answer[0].get_json()["code"] == "not_found"


# ---- the decision boundary ------------------------------------------------------------------

def test_boundary_from_the_final_weights(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    url = f"/v1/runs/{run['id']}/boundary"
    first = any_client.get(f"{url}?size=2").get_json()  # before any: the seed's weights
    assert (first["weights"], first["epoch"]) == ("initial", 0)
    initial = trained_model(run, epochs=0).predict([[first["x"][1], first["y"][1]]])
    assert first["values"][1][1] == pytest.approx(initial["probabilities"][0][1])
    latest = any_client.get(f"/v1/runs/{run['id']}/weights?which=latest").get_json()
    assert (latest["which"], latest["epoch"]) == ("initial", 0)
    model = trained_model(run)
    finish_run(any_app, run["id"], epochs=3, artifacts={"final": model.to_npz()})
    grid = any_client.get(f"{url}?size=5").get_json()
    assert (grid["weights"], grid["epoch"], grid["size"]) == ("final", 3, 5)
    inputs, _ = nn.generate("xor", 40, 0, 1)
    lo, hi = inputs.min(axis=0), inputs.max(axis=0)
    margin = 0.05 * (hi[0] - lo[0])
    assert grid["x"] == pytest.approx([lo[0] - margin, hi[0] + margin])
    corners = [[grid["x"][0], grid["y"][0]], [grid["x"][1], grid["y"][0]],
               [grid["x"][0], grid["y"][1]]]
    probabilities = model.predict(corners)["probabilities"]
    assert [grid["values"][0][0], grid["values"][0][4], grid["values"][4][0]] == pytest.approx(
        [p[1] for p in probabilities])
    # The validation split's rows: XOR_TRAINING holds out half of the 40.
    assert len(set(grid["validation"])) == 20 and max(grid["validation"]) < 40


def test_boundary_from_a_checkpoint_while_training(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    inputs, targets = nn.generate("xor", 40, 0, 1)
    plan = nn.build(run["network"], run["training"], nn.describe(inputs, targets))
    states: dict[int, bytes] = {}
    nn.train(plan, inputs, targets, checkpoint_every=2,
             should_stop=lambda: "stop" if states else None,
             on_checkpoint=lambda e, b: states.__setitem__(e, b))  # what a worker stores
    with db.session_scope(any_app) as session:
        session.add(Artifact(run_id=run["id"], kind="checkpoint", epoch=2, data=states[2]))
    snapshot = nn.snapshot(plan, inputs, targets, states[2])
    grid = any_client.get(f"/v1/runs/{run['id']}/boundary?size=3").get_json()
    assert (grid["weights"], grid["epoch"]) == ("checkpoint", 2)
    assert grid["validation"] == snapshot.validation.tolist()
    corner = snapshot.model.predict([[grid["x"][1], grid["y"][1]]])["probabilities"][0][1]
    assert grid["values"][2][2] == pytest.approx(corner)
    # The checkpoint's weights, for drawing the network while it trains.
    weights = any_client.get(f"/v1/runs/{run['id']}/weights?which=latest").get_json()
    assert (weights["which"], weights["epoch"]) == ("checkpoint", 2)
    assert weights["layers"] == nn.weights_to_json(snapshot.model.weights)["layers"]
    npz = any_client.get(f"/v1/runs/{run['id']}/weights?which=latest&format=npz")
    assert npz.status_code == 406


def test_boundary_needs_two_features(client) -> None:  # noqa: ANN001
    resp = client.post("/v1/datasets", json={"name": "three", "inputs": [[0, 1, 2], [1, 2, 3]] * 4,
                                             "targets": [0, 1] * 4})
    body = {"dataset_id": resp.get_json()["id"], "network": {"layers": [
        {"type": "dense", "units": 1, "activation": "sigmoid"}]}, "training": {"epochs": 1}}
    run = client.post("/v1/runs", json=body).get_json()
    got = client.get(f"/v1/runs/{run['id']}/boundary")
    assert got.status_code == 409 and got.get_json()["code"] == "boundary_not_available"
    assert problem_paths(client.get(f"/v1/runs/{run['id']}/boundary?size=1")) == ["query.size"]
