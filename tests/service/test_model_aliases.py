"""Model aliases (/v1/models): PUT points a name at a run's weights and records a version,
predicting through the name answers as the run's predict does, every API process follows a
PUT at once, and an aliased run is kept."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from service import db
from tests.service.conftest import make_app
from tests.service.helpers import (
    create_run,
    create_xor_dataset,
    finish_run,
    problem_paths,
    trained_model,
)

INPUTS = {"inputs": [[3, 3], [3, -3], [-3, 3], [-3, -3]]}


def _trained(app: Flask, client, epochs: int = 3, **artifacts: bytes) -> dict[str, Any]:  # noqa: ANN001
    """A succeeded run with final weights trained for `epochs` (and the given artifacts)."""
    run = create_run(client, create_xor_dataset(client)["id"])
    final = trained_model(run, epochs=epochs).to_npz()
    finish_run(app, run["id"], epochs=epochs, artifacts={"final": final, **artifacts})
    return run


@pytest.fixture
def two(any_app: Flask, any_client) -> tuple[dict, dict]:  # noqa: ANN001
    return _trained(any_app, any_client, 1), _trained(any_app, any_client, 30)


def test_put_versions_and_roll_back(any_client, two: tuple[dict, dict]) -> None:  # noqa: ANN001
    a, b = two
    made = any_client.put("/v1/models/xor", json={"run_id": a["id"]})
    assert made.status_code == 201 and made.headers["Location"] == "/v1/models/xor"
    assert {k: made.get_json()[k] for k in ("name", "run_id", "weights", "version")} == \
        {"name": "xor", "run_id": a["id"], "weights": "final", "version": 1}
    again = any_client.put("/v1/models/xor", json={"run_id": a["id"], "weights": "final"})
    assert (again.status_code, again.get_json()["version"]) == (200, 1)  # repeated: no version
    moved = any_client.put("/v1/models/xor", json={"run_id": b["id"]}).get_json()
    back = any_client.put("/v1/models/xor", json={"run_id": a["id"]}).get_json()
    assert (moved["version"], back["version"], back["run_id"]) == (2, 3, a["id"])
    versions = any_client.get("/v1/models/xor/versions").get_json()["items"]
    assert [(v["version"], v["run_id"]) for v in versions] == [(3, a["id"]), (2, b["id"]),
                                                                (1, a["id"])]
    page = any_client.get("/v1/models/xor/versions?limit=2").get_json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert any_client.get("/v1/models/xor").get_json() == back
    any_client.put("/v1/models/another", json={"run_id": b["id"]})
    assert [m["name"] for m in any_client.get("/v1/models").get_json()["items"]] == \
        ["another", "xor"]


def test_predict_through_the_alias_is_the_runs_predict(any_client, two: tuple[dict, dict]) -> None:  # noqa: ANN001
    a, b = two
    any_client.put("/v1/models/xor", json={"run_id": a["id"]})
    through = any_client.post("/v1/models/xor/predict", json=INPUTS)
    assert through.status_code == 200
    assert through.get_json() == any_client.post(f"/v1/runs/{a['id']}/predict",
                                                 json=INPUTS).get_json()
    any_client.put("/v1/models/xor", json={"run_id": b["id"]})
    assert any_client.post("/v1/models/xor/predict", json=INPUTS).get_json() == \
        any_client.post(f"/v1/runs/{b['id']}/predict", json=INPUTS).get_json()
    # the same body and the same errors: `which` must be the alias's, bad inputs are 422s
    assert any_client.post("/v1/models/xor/predict",
                           json={**INPUTS, "which": "final"}).status_code == 200
    assert problem_paths(any_client.post("/v1/models/xor/predict",
                                         json={**INPUTS, "which": "best"})) == ["which"]
    assert problem_paths(any_client.post("/v1/models/xor/predict",
                                         json={"inputs": [[1, 2, 3]]})) == ["inputs"]
    assert any_client.post("/v1/models/nobody/predict", json=INPUTS).status_code == 404


def test_every_api_process_follows_a_put_at_once(any_app: Flask, any_client, two) -> None:  # noqa: ANN001
    """Two apps on one database stand for two API processes, each with its model cache
    warm: the PUT through one is what the other answers with from the next request on."""
    a, b = two
    other = make_app(any_app.config["DATABASE_URL"], migrate=False)
    other_client = other.test_client(api_key=any_client.api_key)
    try:
        any_client.put("/v1/models/xor", json={"run_id": a["id"]})
        for _ in range(2):  # the second from its cache
            assert other_client.post("/v1/models/xor/predict", json=INPUTS).get_json()[
                "run_id"] == a["id"]
        any_client.put("/v1/models/xor", json={"run_id": b["id"]})
        assert other_client.post("/v1/models/xor/predict", json=INPUTS).get_json()[
            "run_id"] == b["id"]
    finally:
        db.engine(other).dispose()


def test_put_refuses_what_it_cannot_serve(app: Flask, client) -> None:  # noqa: ANN001
    run = _trained(app, client)
    queued = create_run(client, create_xor_dataset(client)["id"])
    missing = "00000000-0000-4000-8000-000000000000"
    cases = [({"run_id": missing}, "run_id", "no run with this id"),
             ({"run_id": "x"}, "run_id", "must be a UUID"),
             ({}, "run_id", "is required"),
             ({"run_id": run["id"], "weights": "initial"}, "weights", "must be one of"),
             ({"run_id": run["id"], "weights": "best"}, "weights",
              f"run {run['id']} has no best weights (it is succeeded)"),
             ({"run_id": queued["id"]}, "weights",
              f"run {queued['id']} has no final weights (it is queued)"),
             ({"run_id": run["id"], "extra": 1}, "extra", "not a known field")]
    for body, path, message in cases:
        resp = client.put("/v1/models/xor", json=body)
        assert resp.status_code == 422 and problem_paths(resp) == [path], resp.get_json()
        assert message in resp.get_json()["errors"][0]["message"]
    resp = client.put("/v1/models/-bad", json={"run_id": run["id"]})
    assert problem_paths(resp) == ["path.name"]
    assert client.put(f"/v1/models/{'a' * 201}", json={"run_id": run["id"]}).status_code == 422
    assert client.get("/v1/models").get_json()["items"] == []


def test_best_weights(app: Flask, client) -> None:  # noqa: ANN001
    run = create_run(client, create_xor_dataset(client)["id"])
    finish_run(app, run["id"], epochs=3, artifacts={
        "final": trained_model(run, 3).to_npz(), "best": trained_model(run, 2).to_npz()})
    made = client.put("/v1/models/xor", json={"run_id": run["id"], "weights": "best"})
    assert made.status_code == 201
    answer = client.post("/v1/models/xor/predict", json=INPUTS).get_json()
    assert answer == client.post(f"/v1/runs/{run['id']}/predict",
                                 json={**INPUTS, "which": "best"}).get_json()
    assert answer["which"] == "best"


def test_an_aliased_run_is_kept_until_the_alias_moves(any_client, two) -> None:  # noqa: ANN001
    a, b = two
    any_client.put("/v1/models/xor", json={"run_id": a["id"]})
    any_client.put("/v1/models/xor-too", json={"run_id": a["id"]})
    resp = any_client.delete(f"/v1/runs/{a['id']}")
    assert resp.status_code == 409
    body = resp.get_json()
    assert (body["code"], body["models"]) == ("run_aliased", ["xor", "xor-too"])
    assert "xor, xor-too" in body["detail"]
    any_client.put("/v1/models/xor", json={"run_id": b["id"]})
    assert any_client.delete("/v1/models/xor-too").status_code == 204
    assert any_client.get("/v1/models/xor-too").status_code == 404
    assert any_client.delete(f"/v1/runs/{a['id']}").status_code == 204
    # an older version may name a deleted run; rolling back to it is then a 422
    versions = any_client.get("/v1/models/xor/versions").get_json()["items"]
    assert [v["run_id"] for v in versions] == [b["id"], a["id"]]
    assert problem_paths(any_client.put("/v1/models/xor", json={"run_id": a["id"]})) == \
        ["run_id"]
    assert any_client.delete("/v1/models/xor").status_code == 204
    assert any_client.delete("/v1/models/xor").status_code == 404
    assert any_client.delete(f"/v1/runs/{b['id']}").status_code == 204


def test_missing_models_are_404(client) -> None:  # noqa: ANN001
    for method, url in (("GET", "/v1/models/nope"), ("GET", "/v1/models/nope/versions"),
                        ("DELETE", "/v1/models/nope")):
        resp = client.open(url, method=method)
        assert (resp.status_code, resp.get_json()["code"]) == (404, "not_found")
        assert resp.get_json()["detail"] == "no model named nope"
