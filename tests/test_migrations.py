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


def test_existing_rows_go_to_the_default_tenant(url: str) -> None:
    """0002 gives the data sets and runs made before tenancy to a tenant "default", and its
    downgrade keeps them."""
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "0001")
    engine = db.make_engine(url)
    now = "2026-11-27 00:00:00+00:00"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO datasets (id, name, created_at, n_samples, input_shape, task, "
                "target_dim, sha256, source, size_bytes, data) VALUES ('d1', 'old', :now, 4, "
                "'[2]', 'classification', 1, :sha, '{}', 3, :data)"),
                {"now": now, "sha": "0" * 64, "data": b"npz"})
            conn.execute(sa.text(
                "INSERT INTO runs (id, dataset_id, status, network, training, created_at, "
                "epochs_total, epochs_completed, cancel_requested, attempts) VALUES ('r1', 'd1', "
                "'succeeded', '{}', '{}', :now, 1, 1, false, 1)"), {"now": now})
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            tenants = conn.execute(sa.text("SELECT id, name FROM tenants")).all()
            assert [name for _, name in tenants] == ["default"]
            for table in ("datasets", "runs"):
                owners = conn.execute(sa.text(f"SELECT tenant_id FROM {table}")).scalars().all()
                assert owners == [tenants[0][0]], table
        command.check(cfg)
        command.downgrade(cfg, "0001")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id FROM runs")).scalars().all() == ["r1"]
    finally:
        engine.dispose()


def test_no_default_tenant_without_existing_rows(sqlite_url: str) -> None:
    command.upgrade(db.alembic_config(sqlite_url), "head")
    engine = db.make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tenants")).scalar() == 0
    finally:
        engine.dispose()
