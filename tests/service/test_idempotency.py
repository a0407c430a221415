"""Idempotency-Key on POST /v1/datasets and POST /v1/runs, on SQLite and PostgreSQL: a retry
gets the first answer and creates nothing; the same key with another request is a 422; two
concurrent requests with one key create one thing."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask

from service import dataio, db, limits
from service.models import Dataset, IdempotencyKey, Run, utcnow
from tests.service.conftest import add_tenant
from tests.service.helpers import (XOR_NETWORK, XOR_TRAINING, create_xor_dataset, multipart,
                                   npz_bytes)

XOR = {"name": "xor", "generator": {"kind": "xor", "n_samples": 40, "seed": 1}}


def _count(app: Flask, model: type) -> int:
    with db.session_scope(app) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def _key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def _same_answer(first, again) -> None:  # noqa: ANN001
    assert again.status_code == first.status_code
    assert again.get_data() == first.get_data()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers


def test_a_retried_dataset_is_stored_once(any_app: Flask, any_client) -> None:  # noqa: ANN001
    first = any_client.post("/v1/datasets", json=XOR, headers=_key("ds-1"))
    assert first.status_code == 201
    again = any_client.post("/v1/datasets", json=XOR, headers=_key("ds-1"))
    _same_answer(first, again)
    assert _count(any_app, Dataset) == 1
    other = any_client.post("/v1/datasets", json=XOR, headers=_key("ds-2"))  # a new key: a new one
    assert other.status_code == 201 and other.get_json()["id"] != first.get_json()["id"]
    plain = any_client.post("/v1/datasets", json=XOR)  # and without a key, as always
    assert plain.status_code == 201 and _count(any_app, Dataset) == 3


def test_a_retried_run_is_queued_once(any_app: Flask, any_client, published: list[str]) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    body = {"dataset_id": dataset["id"], "network": XOR_NETWORK, "training": XOR_TRAINING}
    first = any_client.post("/v1/runs", json=body, headers=_key("run-1"))
    assert first.status_code == 202
    run_id = first.get_json()["id"]
    any_client.post(f"/v1/runs/{run_id}/cancel")  # it moves on; a retry still gets the first answer
    again = any_client.post("/v1/runs", json=body, headers=_key("run-1"))
    _same_answer(first, again)
    assert again.get_json()["status"] == "queued"
    assert _count(any_app, Run) == 1 and published == [run_id]


def test_a_retried_upload_is_stored_once(any_app: Flask, any_client) -> None:  # noqa: ANN001
    """A multipart retry has another boundary (werkzeug, like every client, draws a new one):
    it is the same request all the same."""
    npz = npz_bytes(inputs=np.eye(4), targets=np.array([0, 1, 0, 1]))

    def upload(data: bytes, filename: str = "d.npz"):  # noqa: ANN202
        return any_client.post("/v1/datasets", data=multipart({"name": "u"}, data, filename),
                               content_type="multipart/form-data", headers=_key("up-1"))

    first = upload(npz)
    assert first.status_code == 201
    _same_answer(first, upload(npz))
    assert _count(any_app, Dataset) == 1
    different = npz_bytes(inputs=np.eye(4) * 2, targets=np.array([0, 1, 0, 1]))
    assert upload(different).get_json()["code"] == "idempotency_key_reused"
    assert upload(npz, "other-name.npz").get_json()["code"] == "idempotency_key_reused"


def test_the_same_key_with_another_request_is_422(any_app: Flask, any_client) -> None:  # noqa: ANN001
    assert any_client.post("/v1/datasets", json=XOR, headers=_key("k")).status_code == 201
    for resp in (
        any_client.post("/v1/datasets", json={**XOR, "name": "other"}, headers=_key("k")),
        any_client.post("/v1/runs", json={"dataset_id": "x"}, headers=_key("k")),  # another path
    ):
        assert resp.status_code == 422
        body = resp.get_json()
        assert body["code"] == "idempotency_key_reused"
        assert body["errors"] == [{"path": "header.Idempotency-Key",
                                   "message": "was already used for a different request"}]
    assert _count(any_app, Dataset) == 1


def test_keys_belong_to_a_tenant(any_app: Flask, any_client) -> None:  # noqa: ANN001
    _, key = add_tenant(any_app, "other")
    other = any_app.test_client(api_key=key)
    mine = any_client.post("/v1/datasets", json=XOR, headers=_key("shared"))
    theirs = other.post("/v1/datasets", json=XOR, headers=_key("shared"))
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["id"] != mine.get_json()["id"]


def test_failures_are_not_kept(any_client) -> None:  # noqa: ANN001
    bad = any_client.post("/v1/datasets", json={"name": "x"}, headers=_key("fix-me"))
    assert bad.status_code == 422
    fixed = any_client.post("/v1/datasets", json=XOR, headers=_key("fix-me"))
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed.headers


@pytest.mark.parametrize("value", ["", " ", "a" * 256, "tab\there", "caf\u00e9"])
def test_bad_keys_are_422(client, value: str) -> None:  # noqa: ANN001
    resp = client.post("/v1/datasets", json=XOR, headers=_key(value))
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["path"] == "header.Idempotency-Key"


def test_keys_expire(any_app: Flask, any_client) -> None:  # noqa: ANN001
    ttl = any_app.config["IDEMPOTENCY_TTL_SECONDS"]
    first = any_client.post("/v1/datasets", json=XOR, headers=_key("old"))
    any_client.post("/v1/datasets", json=XOR, headers=_key("older"))
    with db.session_scope(any_app) as session:
        session.execute(sa.update(IdempotencyKey).values(
            created_at=utcnow() - timedelta(seconds=ttl + 1)))
    again = any_client.post("/v1/datasets", json=XOR, headers=_key("old"))
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.get_json()["id"] != first.get_json()["id"]
    any_app.extensions["idempotency_purge"]["at"] = None  # the next request may purge
    any_client.post("/v1/datasets", json=XOR, headers=_key("new"))
    with db.session_scope(any_app) as session:
        kept = set(session.scalars(sa.select(IdempotencyKey.key)))
    assert kept == {"old", "new"}  # "older" was purged, "old" replaced


def _concurrently(n: int, call: Any) -> list[Any]:
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _meet_in(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    """Make two requests wait for each other in `module.name`: both have passed the
    replay check and are about to create."""
    barrier = threading.Barrier(2, timeout=10)
    original = getattr(module, name)

    def meet(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        barrier.wait()
        return result

    monkeypatch.setattr(module, name, meet)


def test_concurrent_datasets_with_one_key_create_one(any_app: Flask, monkeypatch) -> None:  # noqa: ANN001
    _meet_in(monkeypatch, dataio, "encode")
    answers = _concurrently(2, lambda: any_app.test_client().post(
        "/v1/datasets", json=XOR, headers=_key("race")))
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].get_data() == answers[1].get_data()
    assert sorted("Idempotent-Replayed" in a.headers for a in answers) == [False, True]
    assert _count(any_app, Dataset) == 1


def test_concurrent_runs_with_one_key_create_one(any_app: Flask, monkeypatch, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_app.test_client())
    body = {"dataset_id": dataset["id"], "network": XOR_NETWORK, "training": XOR_TRAINING}
    _meet_in(monkeypatch, limits, "check_plan")
    answers = _concurrently(2, lambda: any_app.test_client().post(
        "/v1/runs", json=body, headers=_key("race")))
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].get_json()["id"] == answers[1].get_json()["id"]
    assert _count(any_app, Run) == 1 and published == [answers[0].get_json()["id"]]
