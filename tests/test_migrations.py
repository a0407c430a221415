"""Migrations: upgrade from empty, no drift from the models, downgrade back to empty."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from service import db
from service.models import Base

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_check_downgrade(url: str) -> None:
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "head")
    assert _tables(url) == set(Base.metadata.tables)
    command.check(cfg)  # raises when the models and the migrations disagree
    command.downgrade(cfg, "base")
    assert _tables(url) == set()
    command.upgrade(cfg, "head")  # and up again: downgrade left nothing behind
    assert _tables(url) == set(Base.metadata.tables)


def test_alembic_cli_uses_the_service_url(sqlite_url: str) -> None:
    """`alembic upgrade head`, as docker-compose's migrate service runs it."""
    env = {"BACKPROP_DATABASE_URL": sqlite_url, "PATH": str(Path(sys.executable).parent)}
    subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    assert _tables(sqlite_url) == set(Base.metadata.tables)


def test_import_direction() -> None:
    """service never imports worker; nn never imports Flask, SQLAlchemy or Celery."""
    code = (
        "import sys, service, service.api, service.db, service.models\n"
        "bad = [m for m in sys.modules if m == 'worker' or m.startswith('worker.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
