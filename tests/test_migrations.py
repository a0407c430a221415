"""Migrations: upgrade from empty, no drift from the models, downgrade back to empty."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from flask.testing import FlaskClient

import nn
from service import db, statstore, usage
from service.models import STAT_FIELDS, Base, Run
from service.serialize import epoch_json, finite
from tests.service.conftest import make_app

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


def test_an_sqlite_database_made_before_auto_vacuum_takes_it(tmp_path: Path) -> None:
    """New databases are made with auto_vacuum=INCREMENTAL (service/db.py); one made before
    takes it at its next migration (VACUUM rewrites it once), and can give space back."""
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("CREATE TABLE leftover (x)")
    raw.execute("INSERT INTO leftover VALUES (zeroblob(1000000))")
    raw.commit()
    assert raw.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    raw.close()
    db.upgrade(f"sqlite:///{path}")
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == db.INCREMENTAL
            conn.exec_driver_sql("DROP TABLE leftover")
        assert db.free_pages(engine) >= 1_000_000 // 4096
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
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


def _tenant_and_dataset(conn: sa.Connection, tenant: str, now: str) -> None:
    """Tenant 't1', named `tenant`, and its data set 'd1' (any revision from 0002 on)."""
    conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', :name, :now)"),
                 {"name": tenant, "now": now})
    conn.execute(sa.text(
        "INSERT INTO datasets (id, tenant_id, name, created_at, n_samples, input_shape, task, "
        "target_dim, sha256, source, size_bytes, data) VALUES ('d1', 't1', 'old', :now, 4, "
        "'[2]', 'classification', 1, :sha, '{}', 3, :data)"),
        {"now": now, "sha": "0" * 64, "data": b"npz"})


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
            _tenant_and_dataset(conn, "old", now)
            for run in ("r1", "r2"):
                conn.execute(sa.text(insert_run), {"id": run, "now": now})
            conn.execute(sa.text("INSERT INTO artifacts (run_id, kind, epoch, created_at, data) "
                                 "VALUES ('r1', 'checkpoint', 4, :now, :data)"),
                         {"now": now, "data": b"state"})
            conn.execute(sa.text(
                "INSERT INTO layer_stats (run_id, phase, epoch, layer, name) "
                "VALUES ('r1', 'train', 1, 0, 'dense_0')"))
        command.upgrade(cfg, "0004")  # (0005 packs the statistics: see its own test)
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
        command.upgrade(cfg, "0004")
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


# ---- 0005: statistics packed one row per epoch ----------------------------------------------

DEEP = {"layers": [{"type": "dense", "units": 3, "activation": "sigmoid"},
                   {"type": "dense", "units": 3, "activation": "relu"},
                   {"type": "dense", "units": 1, "activation": "sigmoid"}]}
LSTM = {"layers": [{"type": "lstm", "units": 3},
                   {"type": "dense", "units": 2, "activation": "softmax"}]}


def _reports(kind: str, network: dict, training: dict) -> list[nn.EpochReport]:
    """What the engine reports for a real run (a few epochs)."""
    inputs, targets = nn.generate(kind, 40, 0, 1)
    plan = nn.build(network, {"epochs": 4, "seed": 1, **training}, nn.describe(inputs, targets))
    reports: list[nn.EpochReport] = []
    nn.train(plan, inputs, targets, on_epoch=reports.append)
    return sorted(reports, key=lambda r: (r.phase, r.epoch))


def _as_float32(value: Any) -> Any:
    """A figure as float32 storage gives it back: the shortest decimal of its float32."""
    if isinstance(value, float):
        return float(str(np.float32(value))) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_as_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    return value


def test_statistics_are_packed_and_answered_as_before(url: str) -> None:
    """Rows written in 0004's form by real runs (dense layers with pretraining, an lstm with
    its gradient norm by time) are packed by 0005, and GET .../layer-stats answers what it
    answered before, each figure as its float32; back to 0004 they are those figures."""
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "0004")
    dense, lstm = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
    runs = {dense: _reports("xor", DEEP, {"pretrain": {"epochs": 2}}),
            lstm: _reports("parity", LSTM, {"loss": "cross_entropy", "batch_size": 8})}
    runs[dense][-1].layer_stats[0]["grad_norm"] = float("nan")  # stored as null
    before = {run: [{"epoch": r.epoch, "phase": r.phase, "layer": s["layer"], "name": s["name"],
                     **{f: finite(s.get(f)) for f in STAT_FIELDS},
                     "params": finite(s["params"]),
                     "grad_norm_by_time": finite(s.get("grad_norm_by_time"))}
                    for r in reports for s in r.layer_stats]
              for run, reports in runs.items()}
    assert {r["phase"] for r in before[dense]} == {"pretrain", "train"}
    assert before[lstm][0]["grad_norm_by_time"] is not None
    engine = db.make_engine(url)
    now = "2026-11-29 00:00:00+00:00"
    old = sa.table("layer_stats", *(sa.column(k) for k in ("run_id", "phase", "epoch", "layer",
                                                           "name", *STAT_FIELDS)),
                   sa.column("grad_norm_by_time", sa.JSON), sa.column("params", sa.JSON))
    try:
        with engine.begin() as conn:
            _tenant_and_dataset(conn, "test", now)
            for run, reports in runs.items():
                conn.execute(sa.text(
                    "INSERT INTO runs (id, tenant_id, dataset_id, status, network, training, "
                    "created_at, epochs_total, epochs_completed, cancel_requested, attempts) "
                    "VALUES (:id, 't1', 'd1', 'succeeded', '{}', '{}', :now, 4, 4, false, 1)"),
                    {"id": run, "now": now})
                conn.execute(sa.text("INSERT INTO epochs (run_id, phase, epoch, duration_s) "
                                     "VALUES (:run, :phase, :epoch, 0.1)"),
                             [{"run": run, "phase": r.phase, "epoch": r.epoch} for r in reports])
                conn.execute(sa.insert(old), [  # as 0004's worker wrote them
                    {"run_id": run, "phase": r.phase, "epoch": r.epoch, "layer": s["layer"],
                     "name": s["name"], **{f: s.get(f) for f in STAT_FIELDS},
                     "grad_norm_by_time": finite(s.get("grad_norm_by_time")),
                     "params": finite(s["params"])} for r in reports for s in r.layer_stats])
        command.upgrade(cfg, "head")
        app = make_app(url, migrate=False)
        client = app.test_client()
        for run, rows in before.items():
            resp = client.get(f"/v1/runs/{run}/layer-stats?limit=1000")
            assert resp.status_code == 200, resp.get_json()
            answer = resp.get_json()["items"]
            assert answer == _as_float32(rows), run
        db.engine(app).dispose()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM epoch_stats")).scalar() == sum(
                len(reports) for reports in runs.values())  # one row per epoch
            layouts = set(conn.execute(sa.text("SELECT layout FROM epoch_stats")).scalars())
            assert layouts == {"0:dense_0:W*,b", "1:dense_1:W*,b",  # pretraining, one a row
                               "0:dense_0:W*,b;1:dense_1:W*,b;2:dense_2:W*,b",
                               "0:dense_0:W,b;1:dense_1:W*,b;2:dense_2:W*,b",  # the NaN one
                               "0:lstm_0:Wx,Wh,b:8;1:dense_1:W*,b"}
            thinned = conn.execute(sa.text("SELECT stats_thinned_after FROM runs")).scalars()
            assert list(thinned) == [None, None]  # every epoch stays
            counted = dict(conn.execute(sa.text("SELECT id, rows_bytes FROM runs")).all())
            stats = conn.execute(sa.text("SELECT r.id, s.layout, s.figures FROM epoch_stats s "
                                         "JOIN runs r ON r.seq = s.run_seq"))
            for run_id, layout, figures in stats:  # what they count toward the quota
                counted[run_id] -= usage.STATS_ROW_BYTES + len(layout) + len(figures)
            assert counted == {run: len(reports) * usage.EPOCH_ROW_BYTES
                               for run, reports in runs.items()}
        command.downgrade(cfg, "0004")
        with engine.connect() as conn:
            back = conn.execute(sa.select(old).order_by(old.c.run_id, old.c.phase, old.c.epoch,
                                                        old.c.layer)).mappings().all()
        expected = [{"run_id": run, **{k: v for k, v in row.items() if k != "epoch" and
                                       k != "phase"}, "phase": row["phase"], "epoch": row["epoch"]}
                    for run, rows in before.items() for row in _as_float32(rows)]
        assert [dict(r) for r in back] == expected
    finally:
        engine.dispose()


# ---- 0008: epoch and statistics rows keyed by the run's number --------------------------------

EPOCH_COLUMNS = ("run_id", "phase", "epoch", "layer", "train_loss", "val_loss", "train_accuracy",
                 "val_accuracy", "learning_rate", "duration_s")


def test_epoch_rows_take_the_runs_number_and_answer_as_before(url: str) -> None:
    """0008 keys the epoch and statistics rows by (run_seq, phase, epoch), the phase as a
    number: GET .../epochs and .../layer-stats answer what the rows held (whole, in pages,
    downsampled, by phase), a run made afterwards gets the next number, and back at 0007
    the rows are what they were."""
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "0007")
    first, second = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
    reports = {first: _reports("xor", DEEP, {"pretrain": {"epochs": 2}}),
               second: _reports("xor", DEEP, {"validation_fraction": 0.25})}
    epochs = [(run, r.phase, r.epoch, r.layer, r.train_loss, r.val_loss, r.train_accuracy,
               r.val_accuracy, r.learning_rate, r.duration_s)
              for run, rs in reports.items() for r in rs]
    assert {e[1] for e in epochs} == {"pretrain", "train"} and None in {e[5] for e in epochs}
    stats = [(run, r.phase, r.epoch, *statstore.pack(r.layer_stats))
             for run, rs in reports.items() for r in rs]
    engine = db.make_engine(url)
    now = "2026-12-06 00:00:00+00:00"
    try:
        with engine.begin() as conn:
            _tenant_and_dataset(conn, "test", now)
            for run in reports:
                conn.execute(sa.text(
                    "INSERT INTO runs (id, tenant_id, dataset_id, status, network, training, "
                    "created_at, epochs_total, epochs_completed, cancel_requested, attempts) "
                    "VALUES (:id, 't1', 'd1', 'succeeded', '{}', '{}', :now, 4, 4, false, 1)"),
                    {"id": run, "now": now})
            conn.execute(sa.insert(sa.table("epochs", *map(sa.column, EPOCH_COLUMNS))),
                         [dict(zip(EPOCH_COLUMNS, e)) for e in epochs])
            conn.execute(sa.insert(sa.table("epoch_stats", *map(sa.column, (
                "run_id", "phase", "epoch", "layout", "figures")))),
                [dict(zip(("run_id", "phase", "epoch", "layout", "figures"), s))
                 for s in stats])
        command.upgrade(cfg, "head")
        command.check(cfg)
        app = make_app(url, migrate=False)
        client = app.test_client()
        for run in reports:
            mine = sorted((e for e in epochs if e[0] == run), key=lambda e: (e[1], e[2]))
            # rows made before 0012 have no exact match
            expected = [epoch_json(SimpleNamespace(**dict(zip(EPOCH_COLUMNS, e)),
                                                   train_exact_match=None, val_exact_match=None))
                        for e in mine]
            base = f"/v1/runs/{run}"
            assert _items(client, f"{base}/epochs?limit=1000") == expected
            assert _pages(client, f"{base}/epochs?limit=3") == expected
            assert _items(client, f"{base}/epochs?phase=train&max_points=2") == [
                e for e in expected if e["phase"] == "train"][::3]  # 4 epochs: 1 and 4
            layer_rows = [row for s in sorted((s for s in stats if s[0] == run),
                                              key=lambda s: (s[1], s[2]))
                          for row in statstore.rows(SimpleNamespace(
                              phase=s[1], epoch=s[2], layout=s[3], figures=s[4]))]
            assert _items(client, f"{base}/layer-stats?limit=1000") == layer_rows
            assert _pages(client, f"{base}/layer-stats?limit=2") == layer_rows
        with db.session_scope(app) as session:  # numbered after the runs there were
            run = Run(tenant_id="t1", dataset_id="d1", network={}, training={},
                      epochs_total=1)
            session.add(run)
            session.flush()
            numbers = session.scalars(sa.select(Run.seq).order_by(Run.seq)).all()
            assert run.seq == numbers[-1] and len(set(numbers)) == 3
            session.delete(run)
        db.engine(app).dispose()
        command.downgrade(cfg, "0007")
        with engine.connect() as conn:
            back = conn.execute(sa.text(
                f"SELECT {', '.join(EPOCH_COLUMNS)} FROM epochs ORDER BY run_id, phase, epoch"))
            assert [tuple(r) for r in back] == sorted(epochs, key=lambda e: e[:3])
            back = conn.execute(sa.text("SELECT run_id, phase, epoch, layout, figures FROM "
                                        "epoch_stats ORDER BY run_id, phase, epoch"))
            assert [(*r[:4], bytes(r[4])) for r in back] == sorted(stats, key=lambda s: s[:3])
        command.upgrade(cfg, "head")  # and up again
    finally:
        engine.dispose()


def _items(client: Any, path: str) -> list[dict[str, Any]]:
    resp = client.get(path)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["items"]


def _pages(client: Any, path: str) -> list[dict[str, Any]]:
    """Every page of a list, followed by its cursors."""
    items, cursor = [], ""
    while cursor is not None:
        resp = client.get(f"{path}&cursor={cursor}")
        assert resp.status_code == 200, resp.get_json()
        items += resp.get_json()["items"]
        cursor = resp.get_json()["next_cursor"]
    return items


# ---- 0009: run names and tags ------------------------------------------------------------------

def test_runs_made_before_names_and_tags_have_none(url: str) -> None:
    """0009: a run made before it has no name and no tags, answered as such and filtered on;
    going back keeps the run."""
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "0007")
    engine = db.make_engine(url)
    now = "2026-12-06 00:00:00+00:00"
    run = "00000000-0000-4000-8000-000000000009"
    try:
        with engine.begin() as conn:
            _tenant_and_dataset(conn, "test", now)
            conn.execute(sa.text(
                "INSERT INTO runs (id, tenant_id, dataset_id, status, network, training, "
                "created_at, epochs_total, epochs_completed, cancel_requested, attempts) "
                "VALUES (:id, 't1', 'd1', 'succeeded', '{}', '{}', :now, 4, 4, false, 1)"),
                {"id": run, "now": now})
        # To head, not 0009: the app's models have the columns of every later revision.
        command.upgrade(cfg, "head")
        app = make_app(url, migrate=False)
        # Not the spec-checking client: the row's network, "{}", is no spec's.
        key = {"Authorization": f"Bearer {app.test_client().api_key}"}
        client = FlaskClient(app)
        with db.session_scope(app) as session:  # make_app's tenant "test" is another one
            session.execute(sa.text("UPDATE runs SET tenant_id = (SELECT id FROM tenants "
                                    "WHERE name = 'test')"))
        answer = client.get(f"/v1/runs/{run}", headers=key).get_json()
        assert (answer["name"], answer["tags"]) == (None, {})
        # 0011: nor is it a sweep's child.
        assert (answer["sweep_id"], answer["sweep_parameters"]) == (None, None)
        assert client.get("/v1/runs?tag=a:b", headers=key).get_json()["items"] == []
        patched = client.patch(f"/v1/runs/{run}", json={"tags": {"a": "b"}}, headers=key)
        assert patched.get_json()["tags"] == {"a": "b"}
        db.engine(app).dispose()
        command.downgrade(cfg, "0007")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id FROM runs")).scalars().all() == [run]
    finally:
        engine.dispose()


# ---- 0010: model aliases and batch predictions -------------------------------------------

def _tenant_dataset_run(conn: sa.Connection, now: str, seq: int | None = None) -> None:
    """Tenant t1 with data set d1 and its succeeded run r1, as rows of the schema of 0007
    to 0010 (`seq`: the run's number, given where the database has no default for it)."""
    conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) VALUES "
                         "('t1', 'one', :now)"), {"now": now})
    conn.execute(sa.text(
        "INSERT INTO datasets (id, tenant_id, name, created_at, n_samples, input_shape, "
        "task, target_dim, sha256, source, size_bytes, data) VALUES ('d1', 't1', 'old', "
        ":now, 4, '[2]', 'classification', 1, :sha, '{}', 3, :data)"),
        {"now": now, "sha": "0" * 64, "data": b"npz"})
    numbered = ", seq" if seq is not None else ""
    conn.execute(sa.text(
        "INSERT INTO runs (id, tenant_id, dataset_id, status, network, training, "
        f"created_at, epochs_total, epochs_completed, cancel_requested, attempts, "
        f"pinned, rows_bytes{numbered}) VALUES ('r1', 't1', 'd1', 'succeeded', '{{}}', '{{}}', "
        f":now, 1, 1, false, 1, false, 0{', :seq' if seq is not None else ''})"),
        {"now": now, "seq": seq})


def test_aliases_and_predictions_come_and_go_beside_existing_runs(url: str) -> None:
    """0010 adds the model aliases and batch predictions to a database with runs (it
    changes none of them); an aliased run cannot be deleted (RESTRICT), a prediction's
    chunks go with it (CASCADE); the downgrade drops both and keeps the runs."""
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "0007")
    engine = db.make_engine(url)
    now = "2026-12-06 00:00:00+00:00"
    try:
        with engine.begin() as conn:
            _tenant_dataset_run(conn, now)
        command.upgrade(cfg, "head")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO model_aliases (tenant_id, name, run_id, weights, version, "
                "created_at, updated_at) VALUES ('t1', 'xor', 'r1', 'final', 1, :now, :now)"),
                {"now": now})
            conn.execute(sa.text(
                "INSERT INTO predictions (id, tenant_id, dataset_id, run_id, weights, status, "
                "rows_total, rows_done, chunk_rows, result_bytes, created_at, "
                "cancel_requested, attempts) VALUES ('p1', 't1', 'd1', 'r1', 'final', "
                "'succeeded', 4, 4, 4, 3, :now, false, 1)"), {"now": now})
            conn.execute(sa.text("INSERT INTO prediction_chunks (prediction_id, chunk, rows, "
                                 "data) VALUES ('p1', 0, 4, :data)"), {"data": b"npz"})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM runs WHERE id = 'r1'"))
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM predictions WHERE id = 'p1'"))
            assert conn.execute(sa.text("SELECT count(*) FROM prediction_chunks")).scalar() == 0
        command.downgrade(cfg, "0007")
        assert not {"model_aliases", "model_versions", "predictions",
                    "prediction_chunks"} & _tables(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id FROM runs")).scalars().all() == ["r1"]
    finally:
        engine.dispose()


# ---- 0012: exact match in epoch rows ----------------------------------------------------------

def test_epoch_rows_keep_their_numbers_and_gain_exact_match(url: str) -> None:
    """0012 adds train_exact_match and val_exact_match to the epoch rows, null for the rows
    made before (answered as null); its downgrade drops them and keeps the rows."""
    cfg = db.alembic_config(url)
    command.upgrade(cfg, "0011")
    engine = db.make_engine(url)
    now = "2026-12-07 00:00:00+00:00"
    try:
        with engine.begin() as conn:
            seq = 7
            _tenant_dataset_run(conn, now, seq=seq)
            conn.execute(sa.text("INSERT INTO epochs (run_seq, phase, epoch, train_loss, "
                                 "duration_s) VALUES (:seq, 1, 1, 0.25, 0.5)"), {"seq": seq})
        command.upgrade(cfg, "head")
        command.check(cfg)
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT train_loss, train_exact_match, val_exact_match "
                                       "FROM epochs")).one()
        assert tuple(row) == (0.25, None, None)
        command.downgrade(cfg, "0011")
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT train_loss FROM epochs")) == 0.25
            columns = {c["name"] for c in sa.inspect(conn).get_columns("epochs")}
        assert not {"train_exact_match", "val_exact_match"} & columns
        if url.startswith("sqlite"):  # an in-place ALTER: still one b-tree, no rowid
            with engine.connect() as conn:
                sql = conn.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'epochs'"))
            assert "WITHOUT ROWID" in sql
    finally:
        engine.dispose()
