"""GET /v1/usage and the quota on stored bytes (service/usage.py, limits.check_stored_bytes)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from flask import Flask

from service import db, usage
from service.models import EpochStats
from tests.service.conftest import add_tenant
from tests.service.helpers import (
    XOR_NETWORK,
    create_run,
    create_xor_dataset,
    finish_run,
    set_status,
    trained_model,
)


def _usage(client) -> dict:  # noqa: ANN001
    resp = client.get("/v1/usage")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_usage_counts_data_sets_weights_and_rows(any_app: Flask, any_client) -> None:  # noqa: ANN001
    assert _usage(any_client) == {"stored_bytes": 0, "max_stored_bytes": 10 * 1024**3,
                                  "bytes": {"datasets": 0, "weights": 0, "rows": 0,
                                            "predictions": 0},
                                  "counts": {"datasets": 0, "runs": 0, "predictions": 0}}
    dataset = create_xor_dataset(any_client)
    source = create_run(any_client, dataset["id"])
    final = trained_model(source).to_npz()
    finish_run(any_app, source["id"], epochs=10, artifacts={"final": final})
    with db.session_scope(any_app) as session:
        usage.record_rows(session, source["id"], 10)  # what its worker does
        layouts = session.execute(sa.select(EpochStats.layout, EpochStats.figures)).all()
    rows = 10 * usage.EPOCH_ROW_BYTES + sum(
        usage.STATS_ROW_BYTES + len(layout) + len(figures) for layout, figures in layouts)
    copy = create_run(any_client, dataset["id"], init_from_run=source["id"])  # initial weights
    with db.session_scope(any_app) as session:
        initial = session.scalar(sa.text("SELECT length(data) FROM artifacts WHERE run_id = :id"),
                                 {"id": copy["id"]})
    expected = {"datasets": dataset["size_bytes"], "weights": len(final) + initial, "rows": rows,
                "predictions": 0}
    assert _usage(any_client) == {"stored_bytes": sum(expected.values()),
                                  "max_stored_bytes": 10 * 1024**3, "bytes": expected,
                                  "counts": {"datasets": 1, "runs": 2, "predictions": 0}}

    other = any_app.test_client(api_key=add_tenant(any_app, "other")[1])
    assert _usage(other)["stored_bytes"] == 0  # a tenant's own, only
    set_status(any_app, copy["id"], "cancelled")
    for run in (copy, source):
        assert any_client.delete(f"/v1/runs/{run['id']}").status_code == 204
    assert _usage(any_client)["bytes"] == {"datasets": dataset["size_bytes"], "weights": 0,
                                           "rows": 0, "predictions": 0}


def test_past_the_quota_creating_is_refused_and_nothing_is_lost(any_app: Flask, any_client) -> None:  # noqa: ANN001
    first = create_xor_dataset(any_client)
    size = first["size_bytes"]
    any_app.config["TENANT_MAX_STORED_BYTES"] = size + size // 2
    assert _usage(any_client)["max_stored_bytes"] == size + size // 2
    resp = any_client.post("/v1/datasets", json={"name": "xor", "generator": {"kind": "xor",
                                                 "n_samples": 40, "seed": 1}})
    body = resp.get_json()
    assert resp.status_code == 403 and body["code"] == "quota_exceeded", body
    assert (body["quota"], body["limit"], body["used"]) == ("stored_bytes", size + size // 2,
                                                            2 * size)
    assert [d["id"] for d in any_client.get("/v1/datasets").get_json()["items"]] == [first["id"]]
    run = create_run(any_client, first["id"])  # within the quota, with nothing stored yet
    model = trained_model(run).to_npz()
    resp = any_client.post("/v1/runs", json={  # its initial weights would not fit
        "dataset_id": first["id"], "network": XOR_NETWORK,
        "initial_weights": {"layers": [{"W": w["W"].tolist(), "b": w["b"].tolist()}
                                       for w in trained_model(run).weights]}})
    assert resp.status_code == 403 and resp.get_json()["code"] == "quota_exceeded"
    any_app.config["TENANT_MAX_STORED_BYTES"] = size - 1  # over it already
    resp = any_client.post("/v1/runs", json={"dataset_id": first["id"], "network": XOR_NETWORK})
    assert resp.status_code == 403 and resp.get_json()["used"] == size
    runs = any_client.get("/v1/runs").get_json()["items"]
    assert [r["id"] for r in runs] == [run["id"]] and len(model) > size // 2
    any_app.config["TENANT_MAX_STORED_BYTES"] = 0  # no quota
    assert _usage(any_client)["max_stored_bytes"] is None
    create_run(any_client, first["id"])
    create_xor_dataset(any_client)


@pytest.mark.parametrize("any_app", ["postgresql"], indirect=True)
def test_concurrent_creations_stay_within_the_quota(any_app: Flask, any_client) -> None:  # noqa: ANN001
    """Eight uploads at once with room for three: the tenant's row serialises them, each
    counting those committed before it; three are stored."""
    size = create_xor_dataset(any_client)["size_bytes"]
    any_app.config["TENANT_MAX_STORED_BYTES"] = 4 * size + size // 2
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def upload() -> None:
        client = any_app.test_client()
        barrier.wait()
        statuses.append(client.post("/v1/datasets", json={
            "name": "xor", "generator": {"kind": "xor", "n_samples": 40, "seed": 1}}).status_code)

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [201] * 3 + [403] * 5
    assert _usage(any_client)["counts"]["datasets"] == 4
