"""API fixtures: a migrated database per test, an app on it, and a client that checks every
response against openapi.yaml (tests/openapi_check.py).

`client` runs on SQLite; `any_client` runs the test twice, on SQLite and on PostgreSQL. Every
app has a tenant "test", and its clients send that tenant's API key.
Publishing goes to kombu's in-memory transport, so nothing leaves the process.
"""

from __future__ import annotations

import functools
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service import auth, create_app, db
from tests.openapi_check import SpecCheckingClient


def make_app(url: str, *, migrate: bool = True, **config: Any) -> Flask:
    """The app on `url`, with a tenant "test" whose key its test clients send by default
    (`app.test_client(api_key=None)`: no key; `add_tenant` makes more tenants)."""
    if migrate:
        db.upgrade(url)
    app = create_app({"TESTING": True, "DATABASE_URL": url, "BROKER_URL": "memory://",
                      "EVENTS_POLL_SECONDS": 0.05, **config})
    _, key = add_tenant(app, "test")
    app.test_client_class = functools.partial(SpecCheckingClient, api_key=key)
    return app


def add_tenant(app: Flask, name: str) -> tuple[str, str]:
    """A new tenant and an API key for it: (tenant id, key)."""
    with db.session_scope(app) as session:
        tenant = auth.tenant_named(session, name, create=True)
        _, key = auth.issue_key(session, tenant)
        return tenant.id, key


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per session; each test gets a copy (migrating is ~0.1 s)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def app(sqlite_url: str, migrated_sqlite: Path) -> Iterator[Flask]:
    shutil.copyfile(migrated_sqlite, sqlite_url.removeprefix("sqlite:///"))
    app = make_app(sqlite_url, migrate=False)
    yield app
    db.engine(app).dispose()


@pytest.fixture
def client(app: Flask) -> SpecCheckingClient:
    return app.test_client()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_app(request: pytest.FixtureRequest) -> Iterator[Flask]:
    if request.param == "sqlite":
        yield request.getfixturevalue("app")
        return
    app = make_app(request.getfixturevalue("pg_url"))
    yield app
    db.engine(app).dispose()


@pytest.fixture
def any_client(any_app: Flask) -> SpecCheckingClient:
    return any_app.test_client()


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the queue with a recorder (the real one is exercised by the other tests)."""
    calls: list[str] = []
    fake = types.SimpleNamespace(publish_run=calls.append, broker_ok=lambda: True)
    monkeypatch.setitem(sys.modules, "service.queue", fake)
    monkeypatch.setattr(sys.modules["service"], "queue", fake, raising=False)
    return calls
