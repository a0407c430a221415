"""One error renderer: every failure is application/problem+json with a stable code."""

from __future__ import annotations

import tracemalloc

import pytest
from flask import Flask

from service import create_app
from service.errors import json_path, size
from service.params import loads, parsed_size
from tests.openapi_check import SpecCheckingClient, strict_json
from tests.service.conftest import make_app


def _problem(resp, status: int, code: str) -> dict:  # noqa: ANN001
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    body = resp.get_json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"https://backprop.example/problems/{code}"
    assert body["title"] and body["detail"]
    return body


@pytest.mark.parametrize(
    ("parts", "path"),
    [
        ([], ""),
        (["name"], "name"),
        (["network", "layers", 1, "units"], "network.layers[1].units"),
        (["inputs", 3], "inputs[3]"),
        ([0, "a"], "[0].a"),
        (["odd key", "x.y"], '["odd key"]["x.y"]'),
    ],
)
def test_json_path(parts: list, path: str) -> None:
    assert json_path(parts) == path


def test_unknown_route_is_a_problem(client) -> None:  # noqa: ANN001
    _problem(client.get("/v1/nothing"), 404, "not_found")
    _problem(client.get("/nothing"), 404, "not_found")  # ("/" is the dashboard)


def test_bad_uuid_in_the_path_is_404(client) -> None:  # noqa: ANN001
    for url in ("/v1/runs/not-a-uuid", "/v1/datasets/123", "/v1/runs/x/epochs",
                "/v1/runs/%00/weights"):
        _problem(client.get(url), 404, "not_found")
    _problem(client.post("/v1/runs/nope/cancel"), 404, "not_found")


def test_unknown_ids_are_404(client) -> None:  # noqa: ANN001
    missing = "00000000-0000-4000-8000-000000000000"
    for url in (f"/v1/runs/{missing}", f"/v1/datasets/{missing}", f"/v1/runs/{missing}/epochs",
                f"/v1/runs/{missing}/layer-stats", f"/v1/runs/{missing}/weights"):
        body = _problem(client.get(url), 404, "not_found")
        assert missing in body["detail"]
    _problem(client.delete(f"/v1/runs/{missing}"), 404, "not_found")
    _problem(client.delete(f"/v1/datasets/{missing}"), 404, "not_found")
    _problem(client.post(f"/v1/runs/{missing}/cancel"), 404, "not_found")
    _problem(client.post(f"/v1/runs/{missing}/predict", json={"inputs": [[1, 2]]}), 404,
             "not_found")


def test_wrong_method_is_405_with_allow(client) -> None:  # noqa: ANN001
    resp = client.put("/v1/runs")
    _problem(resp, 405, "method_not_allowed")
    assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}
    _problem(client.patch("/v1/datasets/00000000-0000-4000-8000-000000000000"), 405,
             "method_not_allowed")


@pytest.mark.parametrize("url", ["/v1/datasets", "/v1/runs"])
def test_malformed_json_is_400_invalid_json(client, url: str) -> None:  # noqa: ANN001
    for raw in (b"{", b'{"name": }', b"\xff\xfe\x00", b"[1, 2,]", b"", b'{"a": 1} x'):
        _problem(client.post(url, data=raw, content_type="application/json"), 400, "invalid_json")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_numbers_are_refused(client, literal: bytes) -> None:  # noqa: ANN001
    raw = b'{"name": "x", "inputs": [[' + literal + b', 1]], "targets": [1]}'
    body = _problem(client.post("/v1/datasets", data=raw, content_type="application/json"),
                    400, "invalid_json")
    assert "finite" in body["detail"] or "range" in body["detail"]


def test_numbers_json_cannot_represent_as_python_ints_are_refused(client) -> None:  # noqa: ANN001
    raw = b'{"name": "x", "inputs": [[' + b"9" * 5000 + b"]], \"targets\": [1]}"
    _problem(client.post("/v1/datasets", data=raw, content_type="application/json"),
             400, "invalid_json")


def test_lone_surrogates_are_refused(client) -> None:  # noqa: ANN001
    raw = b'{"name": "bad \\ud800 name", "generator": {"kind": "xor"}}'
    _problem(client.post("/v1/datasets", data=raw, content_type="application/json"),
             400, "invalid_json")
    ok = b'{"name": "emoji \\ud83d\\ude00", "generator": {"kind": "xor", "seed": 1}}'
    assert client.post("/v1/datasets", data=ok, content_type="application/json").status_code == 201


def test_deeply_nested_json_is_refused(client) -> None:  # noqa: ANN001
    raw = b"[" * 100_000 + b"]" * 100_000
    _problem(client.post("/v1/runs", data=raw, content_type="application/json"), 400,
             "invalid_json")


@pytest.mark.parametrize("body", [b"[]", b"1", b'"x"', b"null", b"true"])
def test_non_object_bodies_are_422_at_the_root(client, body: bytes) -> None:  # noqa: ANN001
    for url in ("/v1/datasets", "/v1/runs"):
        problem = _problem(client.post(url, data=body, content_type="application/json"),
                           422, "validation_error")
        assert problem["errors"] == [{"path": "", "message": "the body must be a JSON object"}]


def test_wrong_content_type_is_415(client) -> None:  # noqa: ANN001
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        _problem(client.post("/v1/runs", data=b"{}", content_type=ctype), 415,
                 "unsupported_media_type")
    _problem(client.post("/v1/datasets", data=b"{}", content_type="text/csv"), 415,
             "unsupported_media_type")
    _problem(client.post("/v1/runs", data=b"{}"), 415, "unsupported_media_type")


def test_json_with_charset_and_vendor_types_is_accepted(client) -> None:  # noqa: ANN001
    body = b'{"name": "x", "generator": {"kind": "xor", "seed": 1}}'
    for ctype in ("application/json; charset=utf-8", "application/vnd.backprop+json"):
        assert client.post("/v1/datasets", data=body, content_type=ctype).status_code == 201


def test_body_too_large_is_413(sqlite_url: str) -> None:
    app = make_app(sqlite_url, MAX_CONTENT_LENGTH=1000)
    client = app.test_client()
    big = b'{"name": "x", "inputs": [' + b"[1, 2]," * 500 + b'[1, 2]], "targets": [1]}'
    _problem(client.post("/v1/datasets", data=big, content_type="application/json"),
             413, "payload_too_large")
    upload = {"name": "x", "file": (__import__("io").BytesIO(b"a,b\n" + b"1,2\n" * 500), "d.csv")}
    _problem(client.post("/v1/datasets", data=upload, content_type="multipart/form-data"),
             413, "payload_too_large")


def test_a_json_body_too_large_to_parse_is_413_before_it_is_parsed(any_app: Flask) -> None:
    any_app.config["JSON_MAX_MEMORY_BYTES"] = 10_000
    client = any_app.test_client()
    nested = b'{"name": "x", "inputs": [' + b"[1]," * 100  # not even finished
    body = _problem(client.post("/v1/datasets", data=nested, content_type="application/json"),
                    413, "payload_too_large")
    assert f"would take about {size(parsed_size(nested))} of memory once read; the limit is " \
        f"9.8 KiB (JSON_MAX_MEMORY_BYTES)" in body["detail"]
    assert parsed_size(nested) > 10_000 > len(nested)
    ok = {"name": "x", "inputs": [[0, 0], [0, 1], [1, 0], [1, 1]], "targets": [0, 1, 1, 0]}
    assert client.post("/v1/datasets", json=ok).status_code == 201


@pytest.mark.parametrize("item", [
    b"[0,0]", b"[1]", b"[]", b"{}", b"0.5", b"1", b'"a"', b"[0.123456789,0.987654321]",
    b"[[0],[1],[1],[0],[1],[0]]", b'{"a":[1.5,2.5]}', b'{"type":"dense","units":4}'])
def test_the_parsed_size_of_a_json_body_is_estimated_from_above(item: bytes) -> None:
    raw = b'{"inputs": [' + b",".join([item] * (200_000 // len(item))) + b"]}"
    tracemalloc.start()
    try:
        parsed = loads(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del parsed
    assert 0.9 * peak <= parsed_size(raw) <= 3.5 * peak


def test_the_garbage_collector_rests_while_json_is_parsed(monkeypatch) -> None:  # noqa: ANN001
    """Parsed JSON holds no cycles; collections during a big parse cost three quarters of it."""
    import gc
    import threading

    import service.params

    seen, real = [], service.params._finite_float  # noqa: SLF001
    monkeypatch.setattr(service.params, "_finite_float",
                        lambda text: seen.append(gc.isenabled()) or real(text))
    assert loads(b"[0.5, 1.5]") == [0.5, 1.5] and seen == [False, False]
    assert gc.isenabled()
    with pytest.raises(ValueError):
        loads(b"[0.5, 1e999]")
    assert gc.isenabled()
    threads = [threading.Thread(target=loads, args=(b"[" + b"[0.5]," * 20_000 + b"[1.5]]",))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled() and True not in seen and len(seen) > 80_000


def test_unexpected_errors_are_logged_500_problems(app: Flask, monkeypatch, caplog) -> None:  # noqa: ANN001
    import service.api.datasets

    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service.api.datasets, "page", boom)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # TESTING would re-raise it
    body = _problem(app.test_client().get("/v1/datasets"), 500, "internal_error")
    assert "secret" not in body["detail"]
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_a_non_finite_number_in_an_answer_is_a_500_not_invalid_json(
        app: Flask, monkeypatch, caplog) -> None:  # noqa: ANN001
    import service.api.datasets

    client = app.test_client()
    dataset = client.post("/v1/datasets", json={"name": "d", "generator": {"kind": "xor"}})
    monkeypatch.setattr(service.api.datasets, "dataset_json", lambda d: {"x": float("nan")})
    app.config["PROPAGATE_EXCEPTIONS"] = False
    _problem(client.get(f"/v1/datasets/{dataset.get_json()['id']}"), 500, "internal_error")
    assert any(r.exc_info and "not JSON compliant" in str(r.exc_info[1]) for r in caplog.records)
    with pytest.raises(AssertionError, match="NaN"):  # and the suite's parser would catch it
        strict_json(b'{"x": NaN}')


def test_validation_errors_list_every_bad_field(client) -> None:  # noqa: ANN001
    resp = client.post("/v1/runs", json={"network": {"layers": []}, "training": {"epochs": -1},
                                         "extra": 1})
    body = _problem(resp, 422, "validation_error")
    paths = {e["path"]: e["message"] for e in body["errors"]}
    assert paths == {
        "dataset_id": "is required",
        "extra": paths["extra"],
        "network.layers": "must not be empty",
        "training.epochs": "must be >= 0",
    }
    assert paths["extra"].startswith("is not a known field")
    assert body["detail"].startswith("dataset_id: is required")


def test_error_messages_never_echo_huge_values(client) -> None:  # noqa: ANN001
    resp = client.post("/v1/runs", json={"dataset_id": "x" * 100_000, "network": "y" * 100_000})
    assert len(resp.get_data()) < 2000


def test_an_unreachable_database_is_a_503_to_retry(caplog) -> None:  # noqa: ANN001
    """Every endpoint behind a key needs the database: down, it is a 503 with Retry-After,
    not a 500, and the log says why without a traceback."""
    from tests.conftest import free_port

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app({"TESTING": True, "DATABASE_URL": url, "BROKER_URL": "memory://",
                      "DATABASE_CONNECT_TIMEOUT_SECONDS": 2})
    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = SpecCheckingClient(app, api_key="bp_" + "x" * 40)
    for answer in (client.get("/v1/datasets"), client.post("/v1/runs", json={})):
        body = _problem(answer, 503, "database_unavailable")
        assert answer.headers["Retry-After"] == "5" and "try again" in body["detail"]
    assert "database unavailable: OperationalError" in caplog.text
    assert not any(r.exc_info for r in caplog.records)
