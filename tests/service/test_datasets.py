"""POST/GET/DELETE /v1/datasets: the three ways in, their errors, pages, deletion rules."""

from __future__ import annotations

import hashlib
import io
import threading

import numpy as np
import pytest
from flask import Flask

import nn
from service import dataio, db
from service.models import Dataset
from tests.service.helpers import (
    create_run,
    create_xor_dataset,
    multipart,
    npz_bytes,
    paused,
    problem_paths,
)

TABLE = {"name": "xor-table", "inputs": [[0, 0], [0, 1], [1, 0], [1, 1]], "targets": [0, 1, 1, 0]}


def _stored(app: Flask, dataset_id: str) -> tuple[np.ndarray, np.ndarray, bytes]:
    with db.session_scope(app) as session:
        data = session.get(Dataset, dataset_id).data
    inputs, targets = dataio.decode(data)
    return inputs, targets, data


def _upload(client, fields: dict, file: bytes | None = None, filename: str = "data.csv"):  # noqa: ANN001, ANN202
    return client.post("/v1/datasets", data=multipart(fields, file, filename),
                       content_type="multipart/form-data")


def _422(resp, path: str, contains: str = "") -> dict:  # noqa: ANN001
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert path in problem_paths(resp), resp.get_json()
    message = next(e["message"] for e in resp.get_json()["errors"] if e["path"] == path)
    assert contains in message, message
    return resp.get_json()


# ---- JSON arrays ---------------------------------------------------------------------------

def test_json_arrays(any_app: Flask, any_client) -> None:  # noqa: ANN001
    resp = any_client.post("/v1/datasets", json=TABLE)
    assert resp.status_code == 201
    body = resp.get_json()
    assert resp.headers["Location"] == f"/v1/datasets/{body['id']}"
    assert body["n_samples"] == 4 and body["input_shape"] == [2]
    assert body["task"] == "classification" and body["classes"] == [0, 1]
    assert body["target_dim"] == 1 and body["source"] == {"kind": "json"}
    inputs, targets, data = _stored(any_app, body["id"])
    assert inputs.dtype == np.float64 and targets.dtype == np.int64
    assert inputs.tolist() == TABLE["inputs"] and targets.tolist() == TABLE["targets"]
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size_bytes"] == len(data)
    assert "data" not in body and any_client.get(f"/v1/datasets/{body['id']}").get_json() == body


def test_same_arrays_same_sha256_whatever_the_route(client) -> None:  # noqa: ANN001
    by_json = client.post("/v1/datasets", json=TABLE).get_json()
    csv = b"a,b,y\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n"
    by_csv = _upload(client, {"name": "csv"}, csv).get_json()
    npz = npz_bytes(inputs=np.array(TABLE["inputs"], dtype=np.int32),
                    targets=np.array(TABLE["targets"], dtype=np.int8))
    by_npz = _upload(client, {"name": "npz"}, npz, "t.npz").get_json()
    assert by_json["sha256"] == by_csv["sha256"] == by_npz["sha256"]
    found = client.get(f"/v1/datasets?sha256={by_json['sha256']}").get_json()["items"]
    assert {d["id"] for d in found} == {by_json["id"], by_csv["id"], by_npz["id"]}


@pytest.mark.parametrize(
    ("targets", "task", "classes", "target_dim"),
    [
        (["cat", "dog", "cat", "dog"], "classification", ["cat", "dog"], 1),
        ([True, False, True, False], "classification", [False, True], 1),
        ([0.5, 1.5, 2.5, 3.5], "regression", None, 1),
        ([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]], "regression", None, 3),
        ([1, 2.5, 3, 4], "regression", None, 1),
    ],
)
def test_json_target_kinds(client, targets, task, classes, target_dim) -> None:  # noqa: ANN001
    body = client.post("/v1/datasets", json={**TABLE, "targets": targets}).get_json()
    assert (body["task"], body["classes"], body["target_dim"]) == (task, classes, target_dim)


def test_task_overrides_the_inferred_task(client) -> None:  # noqa: ANN001
    body = client.post("/v1/datasets", json={**TABLE, "task": "regression"}).get_json()
    assert body["task"] == "regression" and body["classes"] is None


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({"inputs": [[1]], "targets": [1]}, "name", "is required"),
        ({**TABLE, "name": ""}, "name", "must not be empty"),
        ({**TABLE, "name": "x" * 201}, "name", "at most 200"),
        ({**TABLE, "name": "nul\u0000"}, "name", "pattern"),
        ({**TABLE, "name": 5}, "name", "must be a string"),
        ({"name": "x", "targets": [1]}, "inputs", "is required"),
        ({**TABLE, "inputs": []}, "inputs", "must not be empty"),
        ({**TABLE, "inputs": [[0, 0], [0, 1, 2], [1, 0], [1, 1]]}, "inputs[1]", "has 3 values"),
        ({**TABLE, "inputs": [[0, 0], [], [1, 0], [1, 1]]}, "inputs[1]", "must not be empty"),
        ({**TABLE, "inputs": [[0, 0], [0, "1"], [1, 0], [1, 1]]}, "inputs[1][1]", "must be a number"),
        ({**TABLE, "inputs": [[0, 0], [0, True], [1, 0], [1, 1]]}, "inputs[1][1]", "must be a number"),
        ({**TABLE, "inputs": [[0, 0], [0, None], [1, 0], [1, 1]]}, "inputs[1][1]", "must be a number"),
        ({**TABLE, "inputs": [[0, 0], [0, 10**400], [1, 0], [1, 1]]}, "inputs[1]", "float64"),
        ({**TABLE, "inputs": [0, 1, 1, 0]}, "inputs[0]", "must be an array"),
        ({**TABLE, "targets": [0, 1, 1]}, "targets", "shape"),
        ({**TABLE, "targets": []}, "targets", "must not be empty"),
        ({**TABLE, "targets": [0, "a", 1, 0]}, "targets[1]", "must be a number like targets[0]"),
        ({**TABLE, "targets": [0, 1, 1, True]}, "targets[3]", "must be a number"),
        ({**TABLE, "targets": [[1], 1, [1], [0]]}, "targets[1]", "must be an array"),
        ({**TABLE, "targets": [[1], [1, 2], [1], [0]]}, "targets[1]", "has 2 values"),
        ({**TABLE, "targets": [0, None, 1, 0]}, "targets[1]", "must be"),
        ({**TABLE, "targets": [0, {}, 1, 0]}, "targets[1]", "must be"),
        ({**TABLE, "targets": [0, 2**70, 1, 0]}, "targets[1]", "64-bit"),
        ({**TABLE, "targets": ["a", "", "a", "b"]}, "targets[1]", "must not be empty"),
        ({**TABLE, "targets": ["a", "b" * 201, "a", "b"]}, "targets[1]", "at most 200"),
        ({**TABLE, "targets": [1, 1, 1, 1]}, "targets", "at least 2 classes"),
        ({**TABLE, "targets": ["a\u0000", "b", "a", "b"]}, "targets[0]", "NUL"),
        ({**TABLE, "targets": ["a", "b", "a", "b"], "task": "regression"}, "targets", "numbers"),
        ({**TABLE, "task": "clustering"}, "task", "must be one of"),
        ({**TABLE, "extra": 1}, "extra", "not a known field"),
    ],
)
def test_json_arrays_errors(client, body: dict, path: str, message: str) -> None:  # noqa: ANN001
    _422(client.post("/v1/datasets", json=body), path, message)


# ---- generator -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["xor", "circle", "gaussian", "spiral"])
def test_generator(any_app: Flask, any_client, kind: str) -> None:  # noqa: ANN001
    spec = {"kind": kind, "n_samples": 60, "noise": 10, "seed": 3}
    resp = any_client.post("/v1/datasets", json={"name": kind, "generator": spec})
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["source"] == {"kind": "generator", "generator": spec}
    assert body["n_samples"] == 60 and body["classes"] == [0, 1] and body["input_shape"] == [2]
    inputs, targets, _ = _stored(any_app, body["id"])
    assert inputs.shape == (60, 2) and targets.shape == (60,)


def test_generator_defaults_and_a_recorded_seed(client) -> None:  # noqa: ANN001
    body = client.post("/v1/datasets", json={"name": "g", "generator": {"kind": "circle"}}).get_json()
    generator = body["source"]["generator"]
    assert generator["n_samples"] == 500 and generator["noise"] == 0
    assert isinstance(generator["seed"], int)
    again = client.post("/v1/datasets", json={"name": "g2", "generator": generator}).get_json()
    assert again["sha256"] == body["sha256"]  # the recorded seed remakes the data


@pytest.mark.parametrize(
    ("generator", "path", "message"),
    [
        ({"kind": "moons"}, "generator.kind", "must be one of"),
        ({}, "generator.kind", "is required"),
        ({"kind": "xor", "noise": 51}, "generator.noise", "<= 50"),
        ({"kind": "xor", "noise": -1}, "generator.noise", ">= 0"),
        ({"kind": "xor", "noise": "lots"}, "generator.noise", "must be a number"),
        ({"kind": "xor", "n_samples": 1}, "generator.n_samples", ">= 2"),
        ({"kind": "xor", "n_samples": 10**6}, "generator.n_samples", "<= 100000"),
        ({"kind": "xor", "n_samples": True}, "generator.n_samples", "integer"),
        ({"kind": "xor", "n_samples": 2.5}, "generator.n_samples", "integer"),
        ({"kind": "xor", "seed": -1}, "generator.seed", ">= 0"),
        ({"kind": "xor", "colour": "red"}, "generator.colour", "not a known field"),
        ({"kind": "xor", "n_samples": 2, "seed": 3}, "generator.n_samples", "2 classes"),
    ],
)
def test_generator_errors(client, generator: dict, path: str, message: str) -> None:  # noqa: ANN001
    _422(client.post("/v1/datasets", json={"name": "g", "generator": generator}), path, message)


def test_generator_and_arrays_do_not_mix(client) -> None:  # noqa: ANN001
    resp = client.post("/v1/datasets", json={**TABLE, "generator": {"kind": "xor"}})
    _422(resp, "inputs", "not a known field")


# ---- CSV -----------------------------------------------------------------------------------

def test_csv_upload(any_app: Flask, any_client) -> None:  # noqa: ANN001
    csv = b"\xef\xbb\xbfx1, x2,label\r\n0.5,1,cat\r\n1.5, -2,dog\r\n\r\n3,4e-1,cat\r\n"
    resp = _upload(any_client, {"name": "animals"}, csv, "animals.csv")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["classes"] == ["cat", "dog"] and body["n_samples"] == 3
    assert body["source"] == {"kind": "csv", "filename": "animals.csv", "target_column": None,
                              "feature_columns": ["x1", "x2"]}
    inputs, targets, _ = _stored(any_app, body["id"])
    assert inputs.tolist() == [[0.5, 1.0], [1.5, -2.0], [3.0, 0.4]]
    assert targets.tolist() == ["cat", "dog", "cat"]


def test_csv_target_column_and_kinds(client) -> None:  # noqa: ANN001
    csv = b"y,a,b\n1.5,1,2\n2.5,3,4\n"
    body = _upload(client, {"name": "r", "target_column": "y"}, csv).get_json()
    assert body["task"] == "regression" and body["input_shape"] == [2]
    ints = _upload(client, {"name": "c", "target_column": "y"}, b"y,a\n1,0\n2,1\n1,5\n").get_json()
    assert ints["task"] == "classification" and ints["classes"] == [1, 2]
    as_regression = _upload(client, {"name": "c", "target_column": "y", "task": "regression"},
                            b"y,a\n1,0\n2,1\n").get_json()
    assert as_regression["task"] == "regression"


def test_csv_as_a_text_field(client) -> None:  # noqa: ANN001
    resp = client.post("/v1/datasets", data={"name": "t", "file": "a,b\n1,0\n2,1\n"},
                       content_type="multipart/form-data")
    assert resp.status_code == 201 and resp.get_json()["n_samples"] == 2


@pytest.mark.parametrize(
    ("fields", "csv", "path", "message"),
    [
        ({}, b"a,b\n1,0\n", "name", "is required"),
        ({"name": "x"}, None, "file", "is required"),
        ({"name": "x", "colour": "red"}, b"a,b\n1,0\n2,1\n", "colour", "not a known field"),
        ({"name": "x", "task": "other"}, b"a,b\n1,0\n2,1\n", "task", "must be one of"),
        ({"name": "x"}, b"a,b\n1,0\nabc,1\n", "file", "line 3, column 'a': 'abc' is not a finite number"),
        ({"name": "x"}, b"a,b\n1,0\nnan,1\n", "file", "not a finite number"),
        ({"name": "x"}, b"a,b\n1,0\n,1\n", "file", "not a finite number"),
        ({"name": "x"}, b"a,b\n1,0\n1,2,3\n", "file", "line 3 has 3 fields"),
        ({"name": "x"}, b"a,b\n1,0\n1,\n", "file", "1 to 200 characters"),
        ({"name": "x"}, b"a,b\n1,x\x00\n2,y\n", "file", "no NUL"),
        ({"name": "x"}, b"a\n1\n2\n", "file", "at least one feature column"),
        ({"name": "x"}, b"a,b\n", "file", "no data rows"),
        ({"name": "x"}, b"", "file", "is empty"),
        ({"name": "x"}, b"\xff\xfe\x00bad", "file", "UTF-8"),
        ({"name": "x"}, b'a,b\n"1,0\n', "file", ""),
        ({"name": "x"}, b"a,b\n1,0\n2,0\n", "file", "at least 2 classes"),
        ({"name": "x", "target_column": "z"}, b"a,b\n1,0\n2,1\n", "target_column", "no column named 'z'"),
        ({"name": "x", "target_column": "a"}, b"a,a,b\n1,0,0\n2,1,1\n", "target_column", "2 columns"),
    ],
)
def test_csv_errors(client, fields: dict, csv: bytes | None, path: str, message: str) -> None:  # noqa: ANN001
    _422(_upload(client, fields, csv), path, message)


# ---- NPZ -----------------------------------------------------------------------------------

def test_npz_upload(any_app: Flask, any_client) -> None:  # noqa: ANN001
    inputs = np.arange(12, dtype=np.float32).reshape(6, 2)
    targets = np.array(["a", "b", "c", "a", "b", "c"])
    resp = _upload(any_client, {"name": "n"}, npz_bytes(inputs=inputs, targets=targets), "d.npz")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["classes"] == ["a", "b", "c"]
    assert body["source"] == {"kind": "npz", "filename": "d.npz"}
    stored_inputs, stored_targets, _ = _stored(any_app, body["id"])
    assert stored_inputs.dtype == np.float64 and stored_targets.dtype.kind == "U"


def test_npz_compressed_upload(client) -> None:  # noqa: ANN001
    buf = io.BytesIO()
    np.savez_compressed(buf, inputs=np.eye(4), targets=np.array([0.0, 1.0, 2.0, 3.0]))
    body = _upload(client, {"name": "c"}, buf.getvalue(), "c.npz").get_json()
    assert body["task"] == "regression"


def test_npz_refuses_pickled_object_arrays(client) -> None:  # noqa: ANN001
    targets = np.array([{"a": 1}, [2], 3, "x"], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, inputs=np.eye(4), targets=targets)  # allow_pickle is on when saving
    _422(_upload(client, {"name": "p"}, buf.getvalue(), "p.npz"), "file", "pickled data is refused")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"inputs": np.eye(2)}, "no array named 'targets'"),
        ({"x": np.eye(2), "targets": np.zeros(2)}, "no array named 'inputs'"),
        ({"inputs": np.array([["a", "b"], ["c", "d"]]), "targets": np.array([0, 1])}, "must be numbers"),
        ({"inputs": np.array([[np.nan, 1], [1, 2]]), "targets": np.array([0, 1])}, "inputs: contains NaN"),
        ({"inputs": np.zeros(2), "targets": np.array([0, 1])}, "inputs"),
        ({"inputs": np.eye(3), "targets": np.array([0, 1])}, "targets"),
        ({"inputs": np.eye(2), "targets": np.array([1 + 2j, 3j])}, "not supported"),
    ],
)
def test_npz_errors(client, arrays: dict, message: str) -> None:  # noqa: ANN001
    _422(_upload(client, {"name": "n"}, npz_bytes(**arrays), "d.npz"), "file", message)


def test_npz_broken_archives(client) -> None:  # noqa: ANN001
    _422(_upload(client, {"name": "n"}, b"PK\x03\x04garbage", "d.npz"), "file", "readable")
    real = npz_bytes(inputs=np.eye(2), targets=np.array([0, 1]))
    _422(_upload(client, {"name": "n"}, real[: len(real) // 2], "d.npz"), "file", "")


def test_npz_decompression_bombs_are_refused(sqlite_url: str) -> None:
    from tests.service.conftest import make_app

    client = make_app(sqlite_url, DATASET_MAX_BYTES=100_000).test_client()
    buf = io.BytesIO()
    np.savez_compressed(buf, inputs=np.zeros((100_000, 2)), targets=np.zeros(100_000))
    assert len(buf.getvalue()) < 100_000
    _422(_upload(client, {"name": "bomb"}, buf.getvalue(), "b.npz"), "file", "larger than")


# ---- listing, pages ------------------------------------------------------------------------

def test_pages(any_client) -> None:  # noqa: ANN001
    ids = [any_client.post("/v1/datasets", json={**TABLE, "name": f"d{i}"}).get_json()["id"]
           for i in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        url = "/v1/datasets?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = any_client.get(url).get_json()
        assert len(page["items"]) <= 2
        seen += [d["id"] for d in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ids[::-1]  # newest first
    everything = any_client.get("/v1/datasets").get_json()
    assert [d["id"] for d in everything["items"]] == ids[::-1]
    assert everything["next_cursor"] is None


def test_exact_last_page_has_no_next_cursor(client) -> None:  # noqa: ANN001
    for i in range(2):
        client.post("/v1/datasets", json={**TABLE, "name": f"d{i}"})
    page = client.get("/v1/datasets?limit=2").get_json()
    assert len(page["items"]) == 2 and page["next_cursor"] is None


def test_empty_list(client) -> None:  # noqa: ANN001
    assert client.get("/v1/datasets").get_json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("limit=0", "query.limit"),
        ("limit=1001", "query.limit"),
        ("limit=abc", "query.limit"),
        ("limit=1.5", "query.limit"),
        ("limit=%201", "query.limit"),
        ("cursor=garbage", "query.cursor"),
        ("cursor=W10", "query.cursor"),  # "[]": the wrong length
        ("cursor=WzEsMl0", "query.cursor"),  # "[1,2]": the wrong types
        ("cursor=WyJ4IiwieSJd", "query.cursor"),  # '["x","y"]': not a timestamp
        ("cursor=%FF%FE", "query.cursor"),
        ("sha256=abc", "query.sha256"),
        ("sha256=%00", "query.sha256"),
        ("limits=5", "query.limits"),
        ("limit=", "query.limit"),
    ],
)
def test_bad_page_parameters(client, query: str, path: str) -> None:  # noqa: ANN001
    resp = client.get(f"/v1/datasets?{query}")
    assert resp.status_code == 422 and problem_paths(resp) == [path]


# ---- deletion ------------------------------------------------------------------------------

def test_delete(any_client) -> None:  # noqa: ANN001
    dataset = any_client.post("/v1/datasets", json=TABLE).get_json()
    resp = any_client.delete(f"/v1/datasets/{dataset['id']}")
    assert resp.status_code == 204 and resp.get_data() == b""
    assert any_client.get(f"/v1/datasets/{dataset['id']}").status_code == 404
    assert any_client.delete(f"/v1/datasets/{dataset['id']}").status_code == 404


def test_a_delete_racing_a_delete_is_404(any_app: Flask, any_client) -> None:  # noqa: ANN001
    url = f"/v1/datasets/{create_xor_dataset(any_client)['id']}"
    other = any_app.test_client()
    with paused(any_app, "FROM datasets", lambda: other.delete(url)) as answer:  # found
        assert any_client.delete(url).status_code == 204
    assert answer[0].status_code == 404 and answer[0].get_json()["code"] == "not_found"


def test_concurrent_deletes_of_one_data_set(any_app: Flask, any_client) -> None:  # noqa: ANN001
    url = f"/v1/datasets/{create_xor_dataset(any_client)['id']}"
    start, answers = threading.Barrier(6), []

    def delete() -> None:
        client = any_app.test_client()
        start.wait()
        answers.append(client.delete(url).status_code)

    threads = [threading.Thread(target=delete) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [204, 404, 404, 404, 404, 404]


def test_delete_refused_while_any_run_uses_it(any_app: Flask, any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    resp = any_client.delete(f"/v1/datasets/{dataset['id']}")
    assert resp.status_code == 409
    body = resp.get_json()
    assert body["code"] == "dataset_in_use" and body["runs"] == [run["id"]]
    any_client.post(f"/v1/runs/{run['id']}/cancel")
    assert any_client.delete(f"/v1/datasets/{dataset['id']}").status_code == 409  # finished too
    assert any_client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert any_client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204


def test_odd_multipart_parts_are_422_not_500(client) -> None:  # noqa: ANN001
    """Parts without a usable name, found by fuzzing: a validation error, never a crash."""
    boundary = "b0undary"
    parts = [
        'Content-Disposition: form-data; name="x%0A"\r\n\r\nv',
        'Content-Disposition: form-data\r\n\r\nno name at all',
        'Content-Disposition: form-data; name="name"\r\n\r\nn',
        'Content-Disposition: form-data; name="file"; filename="f.csv"\r\n\r\na,b\n1,0\n2,1\n',
    ]
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    resp = client.post("/v1/datasets", data=body.encode(),
                       content_type=f"multipart/form-data; boundary={boundary}")
    assert resp.status_code == 422
    assert all(path != "name" and path != "file" for path in problem_paths(resp))


def test_samples_page_through_the_data_in_order(any_client) -> None:  # noqa: ANN001
    made = any_client.post("/v1/datasets", json={
        "name": "xor", "generator": {"kind": "xor", "n_samples": 25, "seed": 3}}).get_json()
    inputs, targets = nn.generate("xor", 25, 0, 3)
    items, cursor = [], None
    while True:
        page = any_client.get(f"/v1/datasets/{made['id']}/samples?limit=10"
                              + (f"&cursor={cursor}" if cursor else "")).get_json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [s["index"] for s in items] == list(range(25))
    assert [s["input"] for s in items] == inputs.tolist()
    assert [s["target"] for s in items] == targets.tolist()


def test_a_samples_page_is_bounded_by_values(client) -> None:  # noqa: ANN001
    wide = client.post("/v1/datasets", json={"name": "wide", "inputs": [[0.5] * 50_000] * 6,
                                             "targets": [0, 1] * 3}).get_json()
    page = client.get(f"/v1/datasets/{wide['id']}/samples?limit=1000").get_json()
    assert len(page["items"]) == 4 and page["next_cursor"] is not None  # 200,000 values
    assert client.get(f"/v1/datasets/{wide['id']}/samples?cursor=nope").status_code == 422
