"""Migrations: upgrade from empty, no drift from the models, downgrade back to empty."""

from __future__ import annotations

import json
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


def test_checkpoints_get_a_phase_and_pretraining_ones_go_on_downgrade(url: str) -> None:
    """0003: every checkpoint stored before it was taken while training ("train"); going
    back to 0002 deletes pretraining checkpoints (older workers would take their epoch for
    a training epoch) and keeps the others, and the statistics rows stay."""
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "0002")
    engine = db.make_engine(url)
    now = "2026-11-28 00:00:00+00:00"
    insert_run = (
        "INSERT INTO runs (id, tenant_id, dataset_id, status, network, training, created_at, "
        "epochs_total, epochs_completed, cancel_requested, attempts) VALUES (:id, 't1', 'd1', "
        "'running', '{}', '{}', :now, 9, 0, false, 1)")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) "
                                 "VALUES ('t1', 'old', :now)"), {"now": now})
            conn.execute(sa.text(
                "INSERT INTO datasets (id, tenant_id, name, created_at, n_samples, input_shape, "
                "task, target_dim, sha256, source, size_bytes, data) VALUES ('d1', 't1', 'old', "
                ":now, 4, '[2]', 'classification', 1, :sha, '{}', 3, :data)"),
                {"now": now, "sha": "0" * 64, "data": b"npz"})
            for run in ("r1", "r2"):
                conn.execute(sa.text(insert_run), {"id": run, "now": now})
            conn.execute(sa.text("INSERT INTO artifacts (run_id, kind, epoch, created_at, data) "
                                 "VALUES ('r1', 'checkpoint', 4, :now, :data)"),
                         {"now": now, "data": b"state"})
            conn.execute(sa.text(
                "INSERT INTO layer_stats (run_id, phase, epoch, layer, name) "
                "VALUES ('r1', 'train', 1, 0, 'dense_0')"))
        command.upgrade(cfg, "head")
        command.check(cfg)
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT phase FROM artifacts")).scalars().all() == ["train"]
            assert conn.execute(sa.text(
                "SELECT grad_norm_by_time FROM layer_stats")).scalars().all() == [None]
            conn.execute(sa.text(
                "INSERT INTO artifacts (run_id, kind, phase, epoch, created_at, data) "
                "VALUES ('r2', 'checkpoint', 'pretrain', 7, :now, :data)"),
                {"now": now, "data": b"state"})
        command.downgrade(cfg, "0003")               # 0004 moves per-array rows both ways
        with engine.begin() as conn:
            for position, param in enumerate(("W", "b")):
                conn.execute(sa.text(
                    "INSERT INTO param_stats (run_id, phase, epoch, layer, param, position, "
                    "weight_norm) VALUES ('r1', 'train', 1, 0, :param, :position, 1.5)"),
                    {"param": param, "position": position})
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            params = conn.execute(sa.text("SELECT params FROM layer_stats")).scalar()
            params = json.loads(params) if isinstance(params, str) else params
            assert [(p["param"], p["weight_norm"], p["grad_norm"]) for p in params] == [
                ("W", 1.5, None), ("b", 1.5, None)]
        command.downgrade(cfg, "0003")
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(sa.text(
                "SELECT param, position, weight_norm FROM param_stats ORDER BY position"))] == [
                ("W", 0, 1.5), ("b", 1, 1.5)]
        command.downgrade(cfg, "0002")
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT run_id, epoch FROM artifacts")).all()
            assert [tuple(row) for row in kept] == [("r1", 4)]
            assert conn.execute(sa.text("SELECT count(*) FROM layer_stats")).scalar() == 1
    finally:
        engine.dispose()
