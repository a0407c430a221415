"""Worker fixtures: a migrated database (SQLite and PostgreSQL) and the app on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service import create_app, db
from tests.worker.rows import add_dataset, add_run


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def config() -> dict[str, Any]:
    """Test settings; a test may change them before asking for `app`."""
    return {"FLUSH_SECONDS": 0.05, "CHECKPOINT_SECONDS": 0.2}


@pytest.fixture
def broker_config(tmp_path: Path) -> dict[str, Any]:
    """kombu's filesystem broker; tests where the broker matters override this with both."""
    return {"BROKER_URL": "filesystem://", "BROKER_FOLDER": str(tmp_path / "broker")}


@pytest.fixture
def app(db_url: str, config: dict[str, Any], broker_config: dict[str, Any]) -> Iterator[Flask]:
    db.upgrade(db_url)
    app = create_app({"TESTING": True, "DATABASE_URL": db_url, **broker_config, **config})
    with app.app_context():
        yield app
    db.engine(app).dispose()


@pytest.fixture
def dataset(app: Flask) -> str:
    return add_dataset()


@pytest.fixture
def make_run(dataset: str) -> Callable[..., str]:
    return lambda *args, **kwargs: add_run(dataset, *args, **kwargs)
