"""The hot read path's caches and its database connections: a cached model answers with one
query and the right weights, and never outlives its run or crosses tenants; the per-process
LRU/TTL cache; pooled PostgreSQL connections are checked without a round trip, bounded in
their waits, and the API's statements in their duration. (Key revocation within
API_KEY_CACHE_SECONDS: tests/service/test_tenancy.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask

from service import cache, db
from service.cache import LRUCache
from service.models import Run
from tests.service.conftest import add_tenant, make_app
from tests.service.helpers import create_run, create_xor_dataset, finish_run, trained_model

INPUTS = [[1.0, 1.0], [1.0, -1.0], [-2.5, 0.5]]


def _trained_run(app: Flask, client, epochs: int) -> tuple[dict, dict]:  # noqa: ANN001
    """A succeeded run whose final weights are a model trained `epochs` epochs, and what
    that model predicts for INPUTS."""
    run = create_run(client, create_xor_dataset(client)["id"])
    model = trained_model(run, epochs=epochs)
    finish_run(app, run["id"], epochs=epochs, artifacts={"final": model.to_npz()})
    return run, model.predict(np.array(INPUTS))


def _predict(client, run: dict):  # noqa: ANN001, ANN202
    return client.post(f"/v1/runs/{run['id']}/predict", json={"inputs": INPUTS})


@pytest.fixture
def statements(any_app: Flask) -> Iterator[list[tuple[str, str | None]]]:
    """(SQL, isolation level) of every statement the app's engine runs."""
    seen: list[tuple[str, str | None]] = []

    def record(conn, _cursor, sql, _params, _context, _many) -> None:  # noqa: ANN001
        seen.append((sql, conn.get_execution_options().get("isolation_level")))

    sa.event.listen(db.engine(any_app), "before_cursor_execute", record)
    yield seen
    sa.event.remove(db.engine(any_app), "before_cursor_execute", record)


def test_a_cached_model_answers_with_one_autocommit_query(any_app: Flask, any_client,  # noqa: ANN001
                                                          statements: list) -> None:
    run, expected = _trained_run(any_app, any_client, epochs=3)
    assert _predict(any_client, run).get_json()["outputs"] == expected["outputs"]  # loads it
    statements.clear()
    body = _predict(any_client, run).get_json()
    assert body["outputs"] == expected["outputs"] and body["epoch"] == 3
    # The key is remembered, the model too: only the run's status and artifact identity are
    # read, outside any transaction (no BEGIN and ROLLBACK around it).
    assert len(statements) == 1 and statements[0][1] == "AUTOCOMMIT", statements
    assert "runs" in statements[0][0] and "artifacts" in statements[0][0]


def test_cached_models_serve_their_own_runs_weights(any_app: Flask, any_client) -> None:  # noqa: ANN001
    runs = [_trained_run(any_app, any_client, epochs=e) for e in (1, 4, 8)]
    assert len({str(expected["outputs"]) for _, expected in runs}) == 3  # distinct models
    for _ in range(2):  # the second round comes from the cache
        for run, expected in runs:
            body = _predict(any_client, run).get_json()
            assert body["run_id"] == run["id"]
            assert (body["outputs"], body["probabilities"]) == (expected["outputs"],
                                                                expected["probabilities"])
    assert any_app.extensions["model_cache"].hits == 3


def test_a_deleted_run_answers_404_at_once(any_app: Flask, any_client) -> None:  # noqa: ANN001
    deleted_here, _ = _trained_run(any_app, any_client, epochs=2)
    deleted_elsewhere, _ = _trained_run(any_app, any_client, epochs=2)
    for run in (deleted_here, deleted_elsewhere):
        assert _predict(any_client, run).status_code == 200  # now cached
    assert any_client.delete(f"/v1/runs/{deleted_here['id']}").status_code == 204
    with db.session_scope(any_app) as session:  # as another API process would
        session.execute(sa.delete(Run).where(Run.id == deleted_elsewhere["id"]))
    for run in (deleted_here, deleted_elsewhere):
        resp = _predict(any_client, run)
        assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"


def test_another_tenants_key_gets_404_for_a_cached_model(any_app: Flask, any_client) -> None:  # noqa: ANN001
    run, _ = _trained_run(any_app, any_client, epochs=2)
    assert _predict(any_client, run).status_code == 200
    _, other_key = add_tenant(any_app, "other")
    resp = _predict(any_app.test_client(api_key=other_key), run)
    assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"


def test_predict_before_the_weights_exist_is_409_then_serves_them(app: Flask, client) -> None:  # noqa: ANN001
    run = create_run(client, create_xor_dataset(client)["id"])
    resp = _predict(client, run)
    assert resp.status_code == 409 and resp.get_json()["status_now"] == "queued"
    model = trained_model(run, epochs=2)
    finish_run(app, run["id"], epochs=2, artifacts={"final": model.to_npz()})
    assert _predict(client, run).get_json()["outputs"] == model.predict(np.array(INPUTS))["outputs"]


# ---- the cache itself ------------------------------------------------------------------------

def test_lru_cache_with_a_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(cache, "monotonic", lambda: now[0])
    ttl = LRUCache(2, ttl=5)
    assert ttl.put("a", 1) == 1 and ttl.lookup("a") == 1
    now[0] += 4.9
    assert ttl.lookup("a") == 1
    now[0] += 0.2
    assert ttl.lookup("a") is None and "a" not in ttl._items  # noqa: SLF001 - expired, dropped
    assert (ttl.hits, ttl.misses) == (2, 1)
    for keep_nothing in (LRUCache(0), LRUCache(10, ttl=0)):
        assert keep_nothing.get("a", lambda: 1) == 1 and keep_nothing.lookup("a") is None


# ---- PostgreSQL connections ------------------------------------------------------------------

def test_connections_bound_their_waits(pg_url: str) -> None:
    engine = db.make_engine(pg_url, {"DATABASE_CONNECT_TIMEOUT_SECONDS": 4,
                                     "DATABASE_KEEPALIVE_SECONDS": 12})
    try:
        with engine.connect() as conn:
            params = conn.connection.dbapi_connection.info.get_parameters()
    finally:
        engine.dispose()
    assert params["connect_timeout"] == "4" and params["keepalives"] == "1"
    assert (params["keepalives_idle"], params["keepalives_interval"],
            params["keepalives_count"], params["tcp_user_timeout"]) == ("12", "4", "3", "24000")


def test_the_api_limits_its_statements(pg_url: str) -> None:
    app = make_app(pg_url, API_STATEMENT_TIMEOUT_SECONDS=0.2)
    unlimited = make_app(pg_url, migrate=False)
    db.limit_statements(app)  # what service/wsgi.py does; the worker does not
    try:
        with db.engine(app).connect() as conn:
            assert conn.scalar(sa.text("SHOW statement_timeout")) == "200ms"
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.execute(sa.text("SELECT pg_sleep(2)"))
        with db.engine(unlimited).connect() as conn:
            assert conn.scalar(sa.text("SHOW statement_timeout")) == "0"
    finally:
        db.engine(app).dispose()
        db.engine(unlimited).dispose()


def test_a_connection_the_server_closed_is_replaced_without_an_error(pg_url: str) -> None:
    """No pre-ping round trip, yet a server restart (here: every backend terminated) costs
    no request: the closed connection's socket is readable at checkout, and the pool
    connects afresh."""
    app = make_app(pg_url)
    client = app.test_client()
    try:
        assert client.get("/v1/datasets").status_code == 200  # a pooled connection now
        pooled = db.engine(app).pool.checkedin()
        assert pooled >= 1
        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        others = ("FROM pg_stat_activity WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        with admin.connect() as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) {others}"))
            deadline = time.monotonic() + 5
            while conn.scalar(sa.text(f"SELECT count(*) {others}")) and time.monotonic() < deadline:
                time.sleep(0.05)
        for _ in range(pooled + 1):  # every pooled connection was closed: each is replaced
            assert client.get("/v1/datasets").status_code == 200
    finally:
        db.engine(app).dispose()
