"""Every input limit: a 4xx problem naming the field, never a 500, each one configurable.

Data sets: rows, values per sample, stored bytes (JSON, generator, CSV read row by row, NPZ
checked from its .npy headers before anything is allocated); runs: layers, widths,
parameters, epochs, the estimated peak memory and time; a tenant's active runs (429).
"""

from __future__ import annotations

import io
import threading
import zipfile
from typing import Any

import numpy as np
import pytest
from flask import Flask

import nn
from service import errors, limits
from tests.service.conftest import add_tenant, make_app
from tests.service.helpers import (
    XOR_NETWORK,
    XOR_TRAINING,
    create_run,
    create_xor_dataset,
    multipart,
    npz_bytes,
    set_status,
)


def _app(url: str, **config: Any) -> Flask:
    return make_app(url, **config)


def _field_error(resp, status: int, path: str, contains: str = "") -> str:  # noqa: ANN001
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    errors = {e["path"]: e["message"] for e in resp.get_json().get("errors", [])}
    assert path in errors, resp.get_json()
    assert contains in errors[path], errors[path]
    return errors[path]


def _upload(client, data: bytes, filename: str = "d.csv"):  # noqa: ANN001, ANN202
    return client.post("/v1/datasets", data=multipart({"name": "u"}, data, filename),
                       content_type="multipart/form-data")


# ---- data sets: JSON and generator ---------------------------------------------------------

def test_json_rows_and_features(sqlite_url: str) -> None:
    client = _app(sqlite_url, DATASET_MAX_ROWS=4, DATASET_MAX_FEATURES=2).test_client()
    ok = {"name": "t", "inputs": [[0, 0], [0, 1], [1, 0], [1, 1]], "targets": [0, 1, 1, 0]}
    assert client.post("/v1/datasets", json=ok).status_code == 201
    five = {**ok, "inputs": ok["inputs"] + [[0, 0]], "targets": ok["targets"] + [0]}
    _field_error(client.post("/v1/datasets", json=five), 422, "inputs", "5 samples; the limit is 4")
    wide = {**ok, "inputs": [[0, 0, 0]] * 4}
    _field_error(client.post("/v1/datasets", json=wide), 422, "inputs[0]", "3 values per sample")
    images = {**ok, "inputs": [[[0, 0], [0, 0]]] * 4}  # (2, 2) = 4 values per sample
    _field_error(client.post("/v1/datasets", json=images), 422, "inputs[0]", "4 values")


def test_json_rows_are_counted_before_the_schema_walks_them(any_app: Flask) -> None:
    any_app.config.update(DATASET_MAX_ROWS=4, DATASET_MAX_FEATURES=2)
    client = any_app.test_client()
    strings = {"name": "t", "inputs": [["a", "b"]] * 5, "targets": ["x"] * 4, "odd": 1}
    resp = client.post("/v1/datasets", json=strings)
    assert [e["path"] for e in resp.get_json()["errors"]] == ["inputs"]  # nothing else
    wide = {"name": "t", "inputs": [["a", "b", "c"]], "targets": [0], "odd": 1}
    resp = client.post("/v1/datasets", json=wide)
    assert [e["path"] for e in resp.get_json()["errors"]] == ["inputs[0]"]
    targets = {"name": "t", "inputs": [[0, 0]] * 4, "targets": [{}] * 5}
    _field_error(client.post("/v1/datasets", json=targets), 422, "targets", "5 samples; the limit")
    wide_targets = {"name": "t", "inputs": [[0, 0]] * 4, "targets": [[0, 1, 2]] * 4}
    _field_error(client.post("/v1/datasets", json=wide_targets), 422, "targets[0]",
                 "3 values per sample; the limit is 2")


def test_generator_rows(sqlite_url: str) -> None:
    client = _app(sqlite_url, DATASET_MAX_ROWS=100).test_client()
    body = {"name": "g", "generator": {"kind": "xor", "n_samples": 101}}
    _field_error(client.post("/v1/datasets", json=body), 422, "generator.n_samples", "<= 100")
    default = {"name": "g", "generator": {"kind": "xor"}}  # 500 samples by default
    _field_error(client.post("/v1/datasets", json=default), 422, "generator.n_samples")


@pytest.mark.parametrize(("generator", "size"), [
    ({"kind": "glyphs", "n_samples": 20}, 20 * (8 * 8 + 1) * 8),
    ({"kind": "next_token", "n_samples": 10, "length": 64}, 10 * (64 + 64) * 8),
])
def test_a_generator_is_costed_before_it_is_made(any_app: Flask, monkeypatch, generator,
                                                 size: int) -> None:  # noqa: ANN001
    client = any_app.test_client()
    made = []
    real = nn.generate
    monkeypatch.setattr(nn, "generate", lambda **kw: made.append(kw) or real(**kw))
    body = {"name": "g", "generator": generator}
    any_app.config["DATASET_MAX_BYTES"] = size - 1
    _field_error(client.post("/v1/datasets", json=body), 413, "generator.n_samples",
                 f"takes {errors.size(size)}; the limit is {errors.size(size - 1)} "
                 f"(DATASET_MAX_BYTES)")
    assert made == []
    # its arrays fit: it is made, and then its stored npz (headers too) is over the limit
    any_app.config["DATASET_MAX_BYTES"] = size
    _field_error(client.post("/v1/datasets", json=body), 413, "generator.n_samples")
    assert len(made) == 1
    fits = {"name": "g", "generator": {**generator, "n_samples": 9}}
    assert client.post("/v1/datasets", json=fits).status_code == 201 and len(made) == 2


def test_stored_bytes_of_json(sqlite_url: str) -> None:
    client = _app(sqlite_url, DATASET_MAX_BYTES=1000).test_client()
    body = {"name": "t", "inputs": [[float(i), 1.0] for i in range(100)], "targets": [0, 1] * 50}
    _field_error(client.post("/v1/datasets", json=body), 413, "inputs",
                 "the limit is 1000 B (DATASET_MAX_BYTES)")


# ---- CSV -----------------------------------------------------------------------------------

def test_csv_stops_at_the_row_limit(sqlite_url: str) -> None:
    client = _app(sqlite_url, DATASET_MAX_ROWS=5).test_client()
    rows = b"".join(b"%d,%d\n" % (i, i % 2) for i in range(5))
    assert _upload(client, b"a,y\n" + rows).status_code == 201
    # Row 6 is past the limit; the garbage after it is never read.
    body = b"a,y\n" + rows + b"1,0\n" + b"not,a,number,row\n" * 1000
    _field_error(_upload(client, body), 422, "file", "more than 5 data rows (line 7)")


def test_csv_feature_and_byte_limits(sqlite_url: str) -> None:
    client = _app(sqlite_url, DATASET_MAX_FEATURES=3, DATASET_MAX_BYTES=800).test_client()
    _field_error(_upload(client, b"a,b,c,d,y\n1,2,3,4,0\n2,3,4,5,1\n"), 422, "file",
                 "4 feature columns; the limit is 3")
    rows = b"".join(b"%d,%d,%d,%d\n" % (i, i, i, i % 2) for i in range(40))  # 3 x 8 bytes a row
    _field_error(_upload(client, b"a,b,c,y\n" + rows), 422, "file", "more than 800 B")


def test_csv_non_finite_numbers(client) -> None:  # noqa: ANN001
    for bad in (b"inf", b"-Infinity", b"1e999", b"NaN"):
        resp = _upload(client, b"a,y\n1,0\n" + bad + b",1\n")
        _field_error(resp, 422, "file", "not a finite number")


# ---- NPZ -----------------------------------------------------------------------------------

def _npy(header: dict[str, Any], data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy whose header says whatever `header` says, followed by `data`."""
    buf = io.BytesIO()
    write = {(1, 0): np.lib.format.write_array_header_1_0,
             (2, 0): np.lib.format.write_array_header_2_0}[version]
    write(buf, header)
    return buf.getvalue() + data


def _npz(compress: bool = False, **members: bytes) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buf.getvalue()


TARGETS = _npy({"descr": "<i8", "fortran_order": False, "shape": (2,)},
               np.array([0, 1], dtype="<i8").tobytes())


@pytest.fixture
def never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if an array is read (allocated) at all."""
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an array was read before its header was checked")

    monkeypatch.setattr(np.lib.format, "read_array", refuse)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((10**12, 10**6), "claims shape (1000000000000, 1000000) of float64"),  # no machine has it
        ((2, 10**9), "(16000000000 bytes) but holds 32 bytes"),
        ((10_000, 2), "claims shape (10000, 2) of float64 (160000 bytes) but holds 32 bytes"),
        ((2, 3), "but holds 32 bytes"),  # a little more than it holds
        ((2, -2), "impossible shape"),
    ],
)
def test_npz_that_lies_about_its_shape_is_refused_unread(
    client, never_read: None, shape: tuple, message: str, version: tuple, compress: bool,  # noqa: ANN001
) -> None:
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    inputs = _npy(header, np.zeros((2, 2)).tobytes(), version)
    resp = _upload(client, _npz(compress, inputs=inputs, targets=TARGETS), "lie.npz")
    _field_error(resp, 422, "file", message)


def test_an_honest_crafted_npz_is_accepted(client) -> None:  # noqa: ANN001
    inputs = _npy({"descr": "<f8", "fortran_order": False, "shape": (2, 2)},
                  np.eye(2).tobytes())
    resp = _upload(client, _npz(inputs=inputs, targets=TARGETS), "ok.npz")
    assert resp.status_code == 201, resp.get_json()


def test_npz_rows_features_and_stored_size(sqlite_url: str, never_read: None) -> None:
    client = _app(sqlite_url, DATASET_MAX_ROWS=10, DATASET_MAX_FEATURES=4,
                  DATASET_MAX_BYTES=20_000).test_client()
    npz = npz_bytes(inputs=np.zeros((11, 2)), targets=np.arange(11) % 2)
    _field_error(_upload(client, npz, "r.npz"), 422, "file", "inputs has 11 rows; the limit is 10")
    npz = npz_bytes(inputs=np.zeros((4, 5)), targets=np.arange(4) % 2)
    _field_error(_upload(client, npz, "f.npz"), 422, "file", "5 values per sample")
    npz = npz_bytes(inputs=np.zeros((4, 2)), targets=np.zeros((4, 5)))
    _field_error(_upload(client, npz, "t.npz"), 422, "file", "targets has 5 values per sample")
    # 10 x 4 int8 is 40 bytes in the upload, but 320 once stored as float64; 8 x 4000 chars
    # of labels is 32 kB of bytes, but 128 kB once stored as unicode.
    labels = np.array([b"a" * 4000, b"b" * 4000] * 4)
    npz = npz_bytes(inputs=np.zeros((8, 4), dtype=np.int8), targets=labels)
    _field_error(_upload(client, npz, "s.npz"), 422, "file",
                 "larger than 19.5 KiB once stored (about 125.2 KiB)")


def test_npz_non_finite_numbers(client) -> None:  # noqa: ANN001
    for inputs, targets in (
        (np.array([[np.inf, 1.0], [1.0, 2.0]]), np.array([0, 1])),
        (np.array([[0.0, 1.0], [-np.inf, 2.0]], dtype=np.float16), np.array([0, 1])),
        (np.array([[0.0, 1.0], [1.0, 2.0]]), np.array([0.5, np.nan])),
    ):
        resp = _upload(client, npz_bytes(inputs=inputs, targets=targets), "n.npz")
        assert resp.status_code == 422, resp.get_json()
        assert resp.get_json()["errors"][0]["path"] == "file"


# ---- runs ----------------------------------------------------------------------------------

def _run(client, dataset_id: str, network: dict | None = None, **training: Any):  # noqa: ANN001, ANN202
    body = {"dataset_id": dataset_id, "network": network or XOR_NETWORK,
            "training": {**XOR_TRAINING, **training}}
    return client.post("/v1/runs", json=body)


def test_layers_units_and_parameters(sqlite_url: str) -> None:
    client = _app(sqlite_url, RUN_MAX_LAYERS=2, RUN_MAX_UNITS=8).test_client()
    dataset = create_xor_dataset(client)["id"]
    dense = {"type": "dense", "units": 4}
    out = {"type": "dense", "units": 1}
    assert _run(client, dataset, {"layers": [{**dense, "units": 8}, out]}).status_code == 202
    _field_error(_run(client, dataset, {"layers": [dense, dense, out]}), 422, "network.layers",
                 "3 layers; the limit is 2")
    _field_error(_run(client, dataset, {"layers": [dense, {"type": "dropout"}, out]}), 422,
                 "network.layers", "3 layers")
    _field_error(_run(client, dataset, {"layers": [{**dense, "units": 9}, out]}), 422,
                 "network.layers[0].units", "is 9; the limit is 8")
    # XOR_NETWORK has 2*4+4 + 4+1 = 17 parameters
    small = _app(f"{sqlite_url}.2", RUN_MAX_PARAMS=16).test_client()
    _field_error(_run(small, create_xor_dataset(small)["id"]), 422, "network",
                 "17 parameters; the limit is 16")


def test_widths_of_other_layers(sqlite_url: str) -> None:
    client = _app(sqlite_url, RUN_MAX_UNITS=4).test_client()
    glyphs = client.post("/v1/datasets", json={"name": "g", "generator": {
        "kind": "glyphs", "n_samples": 20, "size": 8, "seed": 1}}).get_json()["id"]
    cnn = {"layers": [{"type": "conv2d", "filters": 5, "kernel_size": 3}, {"type": "flatten"},
                      {"type": "dense", "units": 10, "activation": "softmax"}]}
    resp = _run(client, glyphs, cnn, loss="cross_entropy")
    _field_error(resp, 422, "network.layers[0].filters", "is 5; the limit is 4")
    _field_error(resp, 422, "network.layers[2].units", "is 10")


def test_epochs_and_pretrain_epochs(sqlite_url: str) -> None:
    client = _app(sqlite_url, RUN_MAX_EPOCHS=50).test_client()
    dataset = create_xor_dataset(client)["id"]
    assert _run(client, dataset, epochs=50).status_code == 202
    _field_error(_run(client, dataset, epochs=51), 422, "training.epochs", "51; the limit is 50")
    resp = _run(client, dataset, epochs=10, pretrain={"epochs": 51})
    _field_error(resp, 422, "training.pretrain.epochs", "the limit is 50")


# ---- runs: the memory and time they would take --------------------------------------------

def _upload_npz(client, inputs: np.ndarray, targets: np.ndarray) -> str:  # noqa: ANN001
    resp = _upload(client, npz_bytes(inputs=inputs, targets=targets), "d.npz")
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["id"]


WIDE_RELU = {"layers": [{"type": "dense", "units": 10_000, "activation": "relu"},
                        {"type": "dense", "units": 1, "activation": "linear"}]}


def test_a_full_batch_too_large_names_the_batch_size(any_client) -> None:  # noqa: ANN001
    """Issue 17's: a million two-feature rows, 10,000 ReLU units, the whole data set as one
    batch: some 75 GiB for one (N, 10000) array, and it used to be accepted."""
    rng = np.random.default_rng(1)
    dataset = _upload_npz(any_client, rng.normal(size=(1_000_000, 2)),
                          rng.normal(size=1_000_000))
    resp = _run(any_client, dataset, WIDE_RELU, batch_size=None, epochs=1,
                validation_fraction=0)
    message = _field_error(resp, 422, "training.batch_size", "GiB of memory at its peak")
    assert "the limit is 2.0 GiB (RUN_MAX_MEMORY_BYTES)" in message
    need = float(message.split("need about ")[1].split(" GiB")[0])
    assert need > 4 * 75                    # z, a, and their gradients at least
    fits = int(message.split("a batch_size of at most ")[1])
    assert 1 < fits < 10_000
    assert _run(any_client, dataset, WIDE_RELU, batch_size=fits, epochs=1,
                validation_fraction=0).status_code == 202
    _field_error(_run(any_client, dataset, WIDE_RELU, batch_size=fits + 1, epochs=1,
                      validation_fraction=0), 422, "training.batch_size")


def test_a_conv_run_that_would_take_hours_is_refused(any_client) -> None:  # noqa: ANN001
    """Issue 17's: one image, a convolution over its 96,100 positions, 100,000 epochs (some 3
    hours on the reference machine). The old estimate, epochs x samples x parameters, was
    4.8e8, far under its limit of 1e12."""
    image = np.random.default_rng(1).normal(size=(316, 316)).round(3).tolist()
    resp = any_client.post("/v1/datasets", json={"name": "one image", "inputs": [image],
                                                 "targets": [0.5]})
    assert resp.status_code == 201, resp.get_json()
    cnn = {"layers": [{"type": "conv2d", "filters": 64, "kernel_size": 7},
                      {"type": "avgpool2d", "pool_size": 62}, {"type": "flatten"},
                      {"type": "dense", "units": 1, "activation": "linear"}]}
    body = {"dataset_id": resp.get_json()["id"], "network": cnn,
            "training": {"epochs": 100_000, "batch_size": 1}}
    resp = any_client.post("/v1/runs", json=body)
    message = _field_error(resp, 422, "training.epochs", "hours")
    macs = 100_000 * 3 * 2 * (64 * 7 * 7 * 310 * 310 + 64 * 5 * 5)   # the probe: same image
    assert f"({macs:.3g} multiply-adds" in message
    assert "the limit is 60.0 minutes (RUN_TIME_LIMIT_SECONDS)" in message
    fits = int(message.split("at most ")[1].split(" epochs fit")[0])
    assert 1 <= fits < 100_000
    body["training"]["epochs"] = fits
    created = any_client.post("/v1/runs", json=body)
    assert created.status_code == 202, created.get_json()
    assert created.get_json()["estimate"]["seconds"] <= 3600
    body["training"]["epochs"] = fits + 1
    _field_error(any_client.post("/v1/runs", json=body), 422, "training.epochs")


def test_a_run_answers_with_its_estimate(any_client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client, n_samples=40)["id"]
    resp = _run(any_client, dataset, epochs=10)
    assert resp.status_code == 202
    estimate = resp.get_json()["estimate"]
    assert set(estimate) == {"memory_bytes", "multiply_adds", "seconds"}
    # 20 training samples and a probe of them forward and backward, 20 validation forward
    assert estimate["multiply_adds"] == 10 * (3 * 12 * (20 + 20) + 12 * 20)
    assert 0 < estimate["seconds"] < 1 and 40 * 2 * 8 < estimate["memory_bytes"] < 2**22


def test_the_layer_that_takes_the_memory_is_named(any_app: Flask) -> None:
    any_app.config["RUN_MAX_MEMORY_BYTES"] = 64 * 2**20
    client = any_app.test_client()
    dataset = create_xor_dataset(client)["id"]
    wide = {"layers": [{"type": "dense", "units": 8}, {"type": "dense", "units": 2000},
                       {"type": "dense", "units": 2000}, {"type": "dense", "units": 1}]}
    resp = _run(client, dataset, wide, optimizer={"type": "adam"})     # 4 million weights
    _field_error(resp, 422, "network.layers[2].units", "this dense layer takes")
    image = client.post("/v1/datasets", json={"name": "g", "generator": {
        "kind": "glyphs", "n_samples": 20, "size": 32, "seed": 1}}).get_json()["id"]
    cnn = {"layers": [{"type": "conv2d", "filters": 512, "kernel_size": 5, "padding": 2},
                      {"type": "maxpool2d", "pool_size": 32}, {"type": "flatten"},
                      {"type": "dense", "units": 10, "activation": "softmax"}]}
    resp = _run(client, image, cnn, loss="cross_entropy", batch_size=1)   # 512 x 32 x 32
    _field_error(resp, 422, "network.layers[0].filters", "this conv2d layer takes")


def test_a_data_set_too_large_for_the_memory_is_named(any_app: Flask) -> None:
    any_app.config["RUN_MAX_MEMORY_BYTES"] = 8 * 2**20
    client = any_app.test_client()
    dataset = create_xor_dataset(client, n_samples=100_000)["id"]
    resp = _run(client, dataset, validation_fraction=0.1, batch_size=1, epochs=1)
    _field_error(resp, 422, "dataset_id", "the data set and its copies take")


def test_pretraining_that_takes_the_time_names_its_epochs(any_app: Flask) -> None:
    any_app.config["RUN_TIME_LIMIT_SECONDS"] = 5
    client = any_app.test_client()
    dataset = create_xor_dataset(client, n_samples=2000)["id"]
    resp = _run(client, dataset, epochs=1, pretrain={"epochs": 50_000})
    message = _field_error(resp, 422, "training.pretrain.epochs", "the limit is 5 s")
    fits = int(message.split("at most ")[1].split(" epochs fit")[0])
    assert _run(client, dataset, epochs=1, pretrain={"epochs": fits}).status_code == 202


def test_the_estimate_counts_the_stored_data_set() -> None:
    x, y = nn.generate("xor", 40, 0, 1)
    plan = nn.build(XOR_NETWORK, XOR_TRAINING, nn.describe(x, y))
    engine = nn.budget.estimate(plan).memory_bytes
    assert limits.estimate(plan, 10**6).memory_bytes == engine + limits.STORED_COPIES * 10**6


def test_limits_are_settings() -> None:
    from service.config import DEFAULTS

    for name in ("DATASET_MAX_ROWS", "DATASET_MAX_FEATURES", "DATASET_MAX_BYTES",
                 "RUN_MAX_LAYERS", "RUN_MAX_UNITS", "RUN_MAX_PARAMS", "RUN_MAX_EPOCHS",
                 "RUN_MAX_MEMORY_BYTES", "RUN_TIME_LIMIT_SECONDS", "TENANT_MAX_ACTIVE_RUNS",
                 "MAX_CONTENT_LENGTH", "PREDICT_MAX_ROWS", "IDEMPOTENCY_TTL_SECONDS"):
        assert isinstance(DEFAULTS[name], int) and DEFAULTS[name] > 0, name


# ---- a tenant's active runs ----------------------------------------------------------------

def test_too_many_active_runs_is_429(any_app: Flask) -> None:
    any_app.config["TENANT_MAX_ACTIVE_RUNS"] = 2
    client = any_app.test_client()
    dataset = create_xor_dataset(client)["id"]
    first, second = create_run(client, dataset), create_run(client, dataset)
    resp = _run(client, dataset)
    assert resp.status_code == 429
    body = resp.get_json()
    assert body["code"] == "too_many_runs" and body["limit"] == 2
    assert int(resp.headers["Retry-After"]) > 0
    assert len(client.get("/v1/runs").get_json()["items"]) == 2  # nothing was stored

    _, key = add_tenant(any_app, "neighbour")  # another tenant has its own allowance
    neighbour = any_app.test_client(api_key=key)
    create_run(neighbour, create_xor_dataset(neighbour)["id"])

    set_status(any_app, first["id"], "succeeded")  # finished runs do not count
    third = create_run(client, dataset)
    set_status(any_app, second["id"], "running")
    assert _run(client, dataset).status_code == 429  # queued + running
    assert client.post(f"/v1/runs/{third['id']}/cancel").get_json()["status"] == "cancelled"
    assert _run(client, dataset).status_code == 202


def test_concurrent_creations_respect_the_limit(any_app: Flask, monkeypatch) -> None:  # noqa: ANN001
    """Two creations at once with one slot left: one 202 and one 429, never two 202s."""
    any_app.config["TENANT_MAX_ACTIVE_RUNS"] = 1
    dataset = create_xor_dataset(any_app.test_client())["id"]
    both_checked = threading.Barrier(2, timeout=10)
    check_plan = limits.check_plan

    def meet(*args: Any, **kwargs: Any) -> Any:  # both past validation, then both create
        estimate = check_plan(*args, **kwargs)
        both_checked.wait()
        return estimate

    monkeypatch.setattr(limits, "check_plan", meet)
    statuses: list[int] = []

    def create() -> None:
        statuses.append(_run(any_app.test_client(), dataset).status_code)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [202, 429]
