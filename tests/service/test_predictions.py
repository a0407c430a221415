"""Batch predictions through the API (/v1/predictions), their worker called in-process: made
from a run or a model alias, run in chunks, answered as JSON, .npz and CSV that agree with
the run's predict row for row; refused with a problem naming the field; cancelled, deleted,
counted toward the quota, and announced by webhooks."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask

import nn
from service import db
from service.models import PredictionChunk, WebhookDelivery
from tests.service.helpers import (
    create_run,
    create_xor_dataset,
    finish_run,
    problem_paths,
    trained_model,
)
from worker.predictions import run_prediction

ROWS = 40  # create_xor_dataset's samples


def _run(app: Flask, job_id: str) -> str:
    with app.app_context():
        return run_prediction(job_id)


@pytest.fixture
def trained(any_app: Flask, any_client) -> dict[str, Any]:  # noqa: ANN001
    """A data set, a succeeded run on it (final weights), and chunks of 7 rows."""
    any_app.config["PREDICTION_CHUNK_ROWS"] = 7
    dataset = create_xor_dataset(any_client)
    run = create_run(any_client, dataset["id"])
    finish_run(any_app, run["id"], epochs=3, artifacts={"final": trained_model(run, 30).to_npz()})
    return {"dataset": dataset, "run": run}


def _create(client, expect: int = 202, **body: Any) -> dict[str, Any]:  # noqa: ANN001
    resp = client.post("/v1/predictions", json=body)
    assert resp.status_code == expect, resp.get_json()
    return resp.get_json()


def _samples() -> np.ndarray:
    return nn.generate("xor", ROWS, 0, 1)[0]


def test_a_job_from_a_run_answers_as_its_predict_in_every_form(any_app: Flask, any_client,
                                                                trained: dict) -> None:  # noqa: ANN001
    run, dataset = trained["run"], trained["dataset"]
    job = _create(any_client, run_id=run["id"], dataset_id=dataset["id"])
    assert (job["status"], job["rows_total"], job["rows_done"], job["weights"]) == \
        ("queued", ROWS, 0, "final")
    assert _run(any_app, job["id"]) == "succeeded"
    done = any_client.get(f"/v1/predictions/{job['id']}").get_json()
    assert (done["status"], done["rows_done"], done["progress"], done["attempts"]) == \
        ("succeeded", ROWS, 1.0, 1)
    with db.session_scope(any_app) as session:
        rows = session.scalars(sa.select(PredictionChunk.rows).where(
            PredictionChunk.prediction_id == job["id"]).order_by(PredictionChunk.chunk)).all()
    assert rows == [7, 7, 7, 7, 7, 5]

    expected = any_client.post(f"/v1/runs/{run['id']}/predict",
                               json={"inputs": _samples().tolist()}).get_json()
    url = f"/v1/predictions/{job['id']}/result"
    as_json = any_client.get(url).get_json()
    assert as_json == {k: expected[k] for k in ("outputs", "labels", "probabilities")}

    npz = any_client.get(url, headers={"Accept": "application/x-npz"})
    assert npz.headers["Content-Disposition"].endswith(f'prediction-{job["id"]}.npz"')
    with np.load(io.BytesIO(npz.data), allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["outputs"], expected["outputs"])
        np.testing.assert_array_equal(arrays["labels"], expected["labels"])
        np.testing.assert_array_equal(arrays["probabilities"], expected["probabilities"])

    text = any_client.get(f"{url}?format=csv").get_data(as_text=True)
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["output_0", "label", "probability_0", "probability_1"]
    assert [[float(v) for v in line] for line in lines[1:]] == [
        [o[0], label, *p] for o, label, p in zip(expected["outputs"], expected["labels"],
                                                 expected["probabilities"])]


def test_a_job_from_a_model_keeps_the_version_it_was_made_with(any_app: Flask, any_client,
                                                                 trained: dict) -> None:  # noqa: ANN001
    run, dataset = trained["run"], trained["dataset"]
    other = create_run(any_client, dataset["id"])
    finish_run(any_app, other["id"], epochs=3,
               artifacts={"final": trained_model(other, 1).to_npz()})
    any_client.put("/v1/models/xor", json={"run_id": run["id"]})
    job = _create(any_client, model="xor", dataset_id=dataset["id"])
    assert (job["model"], job["model_version"], job["run_id"]) == ("xor", 1, run["id"])
    any_client.put("/v1/models/xor", json={"run_id": other["id"]})  # after: not this job's
    assert _run(any_app, job["id"]) == "succeeded"
    expected = any_client.post(f"/v1/runs/{run['id']}/predict",
                               json={"inputs": _samples().tolist()}).get_json()
    assert any_client.get(f"/v1/predictions/{job['id']}/result").get_json()["outputs"] == \
        expected["outputs"]
    listed = any_client.get("/v1/predictions?status=succeeded").get_json()["items"]
    assert [p["id"] for p in listed] == [job["id"]]
    assert any_client.get("/v1/predictions?status=queued").get_json()["items"] == []


def test_bad_requests_name_the_field(app: Flask, client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    queued = create_run(client, dataset["id"])
    wide = client.post("/v1/datasets", json={"name": "wide", "inputs": [[1, 2, 3], [4, 5, 6]],
                                             "targets": [0, 1]}).get_json()
    missing = "00000000-0000-4000-8000-000000000000"
    cases = [
        ({"dataset_id": dataset["id"]}, "", "give run_id or model"),
        ({"dataset_id": dataset["id"], "run_id": run["id"], "model": "xor"}, "run_id",
         "give run_id or model"),
        ({"run_id": run["id"]}, "dataset_id", "is required"),
        ({"run_id": run["id"], "dataset_id": missing}, "dataset_id", "no data set with this id"),
        ({"run_id": missing, "dataset_id": dataset["id"]}, "run_id", "no run with this id"),
        ({"model": "nobody", "dataset_id": dataset["id"]}, "model", "no model with this name"),
        ({"model": "x", "weights": "best", "dataset_id": dataset["id"]}, "weights",
         "give weights with run_id only"),
        ({"run_id": run["id"], "weights": "best", "dataset_id": dataset["id"]}, "weights",
         "has no best weights"),
        ({"run_id": queued["id"], "dataset_id": dataset["id"]}, "weights", "has no final weights"),
        ({"run_id": run["id"], "dataset_id": wide["id"]}, "dataset_id",
         "the data set's samples have the shape [3]; the model takes [2]"),
        ({"run_id": run["id"], "dataset_id": dataset["id"], "rows": 3}, "rows",
         "not a known field"),
    ]
    for body, path, message in cases:
        resp = client.post("/v1/predictions", json=body)
        assert resp.status_code == 422 and problem_paths(resp) == [path], (body, resp.get_json())
        assert message in resp.get_json()["errors"][0]["message"], resp.get_json()
    assert client.get("/v1/predictions").get_json()["items"] == []


def test_the_result_waits_for_success_and_json_has_a_size_limit(app: Flask, client) -> None:  # noqa: ANN001
    app.config.update(PREDICTION_CHUNK_ROWS=7, PREDICT_MAX_ROWS=39)
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    job = _create(client, run_id=run["id"], dataset_id=dataset["id"])
    url = f"/v1/predictions/{job['id']}/result"
    early = client.get(url)
    assert (early.status_code, early.get_json()["code"], early.get_json()["status_now"]) == \
        (409, "prediction_not_ready", "queued")
    _run(app, job["id"])
    big = client.get(url)
    assert (big.status_code, big.get_json()["code"], big.get_json()["rows"]) == \
        (406, "result_too_large", ROWS)
    assert "at most 39 (PREDICT_MAX_ROWS): ask for application/x-npz or text/csv" in \
        big.get_json()["detail"]
    assert client.get(url, headers={"Accept": "text/csv"}).status_code == 200
    assert client.get(url, headers={"Accept": "image/png"}).status_code == 406
    assert problem_paths(client.get(f"{url}?format=xml")) == ["query.format"]


def test_cancel_and_delete(any_app: Flask, any_client, trained: dict) -> None:  # noqa: ANN001
    body = {"run_id": trained["run"]["id"], "dataset_id": trained["dataset"]["id"]}
    queued = _create(any_client, **body)
    assert any_client.delete(f"/v1/predictions/{queued['id']}").get_json()["code"] == \
        "prediction_active"
    cancelled = any_client.post(f"/v1/predictions/{queued['id']}/cancel").get_json()
    assert (cancelled["status"], cancelled["cancel_requested"]) == ("cancelled", True)
    assert _run(any_app, queued["id"]) == "dropped"  # its message, arriving late

    running = _create(any_client, **body)
    set_status_prediction(any_app, running["id"], "running")
    assert any_client.post(f"/v1/predictions/{running['id']}/cancel").get_json()["status"] == \
        "cancelling"

    done = _create(any_client, **body)
    _run(any_app, done["id"])
    finished = any_client.post(f"/v1/predictions/{done['id']}/cancel")
    assert (finished.status_code, finished.get_json()["code"]) == (409, "prediction_finished")
    usage = any_client.get("/v1/usage").get_json()
    stored = any_client.get(f"/v1/predictions/{done['id']}").get_json()["result_bytes"]
    assert stored > 0 and usage["bytes"]["predictions"] == stored
    assert any_client.delete(f"/v1/predictions/{done['id']}").status_code == 204
    assert any_client.get(f"/v1/predictions/{done['id']}").status_code == 404
    assert any_client.get("/v1/usage").get_json()["bytes"]["predictions"] == 0
    with db.session_scope(any_app) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(PredictionChunk)) == 0


def set_status_prediction(app: Flask, job_id: str, status: str) -> None:
    from service.models import Prediction

    with db.session_scope(app) as session:
        session.get(Prediction, job_id).status = status


def test_a_running_job_cancelled_stops_at_its_next_chunk(app: Flask, client,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    app.config["PREDICTION_CHUNK_ROWS"] = 7
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    job = _create(client, run_id=run["id"], dataset_id=dataset["id"])
    from service import predictions

    encode = predictions.encode_chunk
    calls = []

    def cancel_on_second(arrays: dict) -> bytes:
        calls.append(1)
        if len(calls) == 2:
            assert client.post(f"/v1/predictions/{job['id']}/cancel").get_json()[
                "status"] == "cancelling"
        return encode(arrays)

    monkeypatch.setattr(predictions, "encode_chunk", cancel_on_second)
    assert _run(app, job["id"]) == "cancelled"
    after = client.get(f"/v1/predictions/{job['id']}").get_json()
    assert (after["status"], after["rows_done"]) == ("cancelled", 14)


def test_the_quota_counts_the_result(app: Flask, client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    used = client.get("/v1/usage").get_json()["stored_bytes"]
    app.config["TENANT_MAX_STORED_BYTES"] = used + ROWS * 4 * 8 - 1  # 4 numbers a row
    resp = client.post("/v1/predictions", json={"run_id": run["id"], "dataset_id": dataset["id"]})
    assert (resp.status_code, resp.get_json()["code"]) == (403, "quota_exceeded")
    app.config["TENANT_MAX_STORED_BYTES"] = used + ROWS * 4 * 8
    _create(client, run_id=run["id"], dataset_id=dataset["id"])


def test_webhooks_hear_of_the_job(app: Flask, client) -> None:  # noqa: ANN001
    app.config["WEBHOOK_ALLOW_PRIVATE_NETWORKS"] = True
    hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook",
                                             "events": ["prediction.succeeded",
                                                        "prediction.started"]})
    assert hook.status_code == 201, hook.get_json()
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    job = _create(client, run_id=run["id"], dataset_id=dataset["id"])
    _run(app, job["id"])
    with db.session_scope(app) as session:
        sent = session.execute(sa.select(WebhookDelivery.event_type, WebhookDelivery.body)
                               .order_by(WebhookDelivery.created_at)).all()
    assert [t for t, _ in sent] == ["prediction.started", "prediction.succeeded"]
    assert f'"id":"{job["id"]}"' in sent[-1][1] and '"rows_done":40' in sent[-1][1]


def test_a_job_whose_run_went_fails_visibly(app: Flask, client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    job = _create(client, run_id=run["id"], dataset_id=dataset["id"])
    assert client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert _run(app, job["id"]) == "failed"
    error = client.get(f"/v1/predictions/{job['id']}").get_json()["error"]
    assert error == {"code": "invalid_data",
                     "message": f"run {run['id']} has no final weights any more"}


def test_a_data_set_a_job_reads_is_kept(app: Flask, client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    other = create_xor_dataset(client, n_samples=50)
    job = _create(client, run_id=run["id"], dataset_id=other["id"])
    resp = client.delete(f"/v1/datasets/{other['id']}")
    body = resp.get_json()
    assert (resp.status_code, body["code"], body["runs"], body["predictions"]) == \
        (409, "dataset_in_use", [], [job["id"]])
    assert "is used by batch predictions" in body["detail"]
    client.post(f"/v1/predictions/{job['id']}/cancel")
    assert client.delete(f"/v1/predictions/{job['id']}").status_code == 204
    assert client.delete(f"/v1/datasets/{other['id']}").status_code == 204
