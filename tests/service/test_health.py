"""/healthz, /readyz."""

from __future__ import annotations

import pytest
from flask import Flask

from service import create_app
from tests.openapi_check import SpecCheckingClient


def test_healthz(client) -> None:  # noqa: ANN001
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


def test_ready(any_client) -> None:  # noqa: ANN001
    resp = any_client.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_not_ready_when_the_broker_is_down(app: Flask, client,  # noqa: ANN001
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import service.queue

    monkeypatch.setattr(service.queue, "broker_ok", lambda: False)
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["code"] == "not_ready" and "broker" in body["detail"]
    assert body["checks"] == {"database": "ok", "broker": "unavailable"}


def test_not_ready_when_the_broker_is_unreachable(sqlite_url: str) -> None:
    from tests.service.conftest import make_app

    app = make_app(sqlite_url, BROKER_URL="redis://127.0.0.1:1/0")
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["checks"]["broker"] == "unavailable"


def test_not_ready_without_a_database(tmp_path) -> None:  # noqa: ANN001
    app = create_app({"TESTING": True, "BROKER_URL": "memory://",
                      "DATABASE_URL": f"sqlite:///{tmp_path}/missing/dir/x.db"})
    app.test_client_class = SpecCheckingClient
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    checks = resp.get_json()["checks"]
    assert checks["database"].startswith("error: ") and checks["broker"] == "ok"
    assert app.test_client().get("/healthz").status_code == 200  # liveness does not care
