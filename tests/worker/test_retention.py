"""Retention, done by the reconciler: old finished runs, finished runs' checkpoints, SQLite's
free pages (worker/retention.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from service import db, statstore
from service.models import Artifact, Epoch, EpochStats, ModelAlias, Run, utcnow
from tests.worker.rows import get_run, set_run
from worker import retention
from worker.reconcile import reconcile
from worker.training import train_run

HOUR = timedelta(hours=1)


def _stored(run_id: str, seq: int) -> dict[str, int]:
    """The run's rows in each table that holds them (`seq`: the run's, read while it was)."""
    mine = {Run: Run.id == run_id, Epoch: Epoch.run_seq == seq,
            EpochStats: EpochStats.run_seq == seq, Artifact: Artifact.run_id == run_id}
    with db.session_scope() as session:
        return {m.__tablename__: session.scalar(sa.select(sa.func.count()).select_from(m)
                                                .where(where)) for m, where in mine.items()}


def _finished(make_run: Callable[..., str], status: str, ago: timedelta, **columns: object
              ) -> str:
    """A run that finished `ago`, with an epoch, its statistics and its final weights."""
    run_id = make_run(status=status, finished_at=utcnow() - ago, **columns)
    layout, figures = statstore.pack([{"layer": 0, "name": "dense_0", "grad_norm": 1.0}])
    with db.session_scope() as session:
        seq = session.get(Run, run_id).seq
        session.add(Epoch(run_seq=seq, phase="train", epoch=1, duration_s=0.1))
        session.add(EpochStats(run_seq=seq, phase="train", epoch=1, layout=layout,
                               figures=figures))
        session.add(Artifact(run_id=run_id, kind="final", epoch=1, data=b"weights"))
    return run_id


def test_old_finished_runs_go_with_their_rows_unless_pinned(
    app: Flask, make_run: Callable[..., str],
) -> None:
    app.config["RUN_RETENTION_SECONDS"] = 3600
    old = [_finished(make_run, status, 2 * HOUR) for status in ("succeeded", "failed",
                                                                "cancelled")]
    kept = [_finished(make_run, "succeeded", 2 * HOUR, pinned=True),
            _finished(make_run, "succeeded", HOUR / 2),
            make_run(status="running", started_at=utcnow() - 2 * HOUR),
            make_run(status="queued")]
    seqs = {run_id: get_run(run_id).seq for run_id in old + kept}
    swept = reconcile()
    assert (swept["deleted"], swept["checkpoints"]) == (3, 0)
    for run_id in old:
        assert _stored(run_id, seqs[run_id]) == {"runs": 0, "epochs": 0, "epoch_stats": 0,
                                                 "artifacts": 0}
    assert [get_run(run_id) is not None for run_id in kept] == [True] * 4
    assert _stored(kept[0], seqs[kept[0]])["epoch_stats"] == 1
    assert reconcile()["deleted"] == 0


def test_a_run_a_model_alias_points_at_is_kept(app: Flask, make_run: Callable[..., str]) -> None:
    """Kept while an alias points at it, whatever its age; once the alias moves, it goes."""
    aliased, other = (_finished(make_run, "succeeded", 2 * HOUR) for _ in range(2))
    with db.session_scope() as session:
        tenant_id = session.get(Run, aliased).tenant_id
        session.add(ModelAlias(tenant_id=tenant_id, name="xor", run_id=aliased,
                               weights="final", version=1))
    app.config["RUN_RETENTION_SECONDS"] = 3600
    assert reconcile()["deleted"] == 1 and get_run(other) is None
    assert get_run(aliased) is not None
    with db.session_scope() as session:
        session.get(ModelAlias, (tenant_id, "xor")).run_id = make_run(status="succeeded")
    assert reconcile()["deleted"] == 1 and get_run(aliased) is None


def test_retention_is_off_by_default_and_goes_in_batches(
    app: Flask, make_run: Callable[..., str],
) -> None:
    runs = [_finished(make_run, "succeeded", (3 + i) * HOUR) for i in range(3)]
    assert reconcile()["deleted"] == 0 and app.config["RUN_RETENTION_SECONDS"] == 0
    config = {**app.config, "RUN_RETENTION_SECONDS": 3600}
    assert retention.sweep(utcnow(), config, batch=2)["deleted"] == 2
    assert [get_run(run_id) is not None for run_id in runs] == [True, False, False]  # oldest
    assert retention.sweep(utcnow(), config, batch=2)["deleted"] == 1


def test_a_pin_that_commits_first_wins(
    app: Flask, make_run: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run is chosen, then pinned (PATCH) before its delete: the delete, a
    compare-and-set on the same conditions, leaves it."""
    run_id = _finished(make_run, "succeeded", 2 * HOUR)
    scopes = {"n": 0}
    scope = retention.session_scope

    @contextmanager
    def pinned_after_the_choice() -> Iterator[sa.orm.Session]:
        scopes["n"] += 1
        if scopes["n"] == 2:
            set_run(run_id, pinned=True)
        with scope() as session:
            yield session

    monkeypatch.setattr(retention, "session_scope", pinned_after_the_choice)
    config = {**app.config, "RUN_RETENTION_SECONDS": 3600}
    assert retention.sweep(utcnow(), config)["deleted"] == 0
    assert get_run(run_id).pinned


def test_a_run_that_ends_drops_its_checkpoint_and_so_do_settled_ones(
    app: Flask, make_run: Callable[..., str],
) -> None:
    """Cancelled and failed runs too: nothing trains a finished run again (a new run may
    start from its final weights). The reconciler drops those of runs it ends itself."""
    app.config.update(RUN_TIME_LIMIT_SECONDS=0.3)
    timed_out = make_run(training={"epochs": 100_000})
    assert train_run(timed_out) == "failed"
    with db.session_scope() as session:
        kinds = session.scalars(sa.select(Artifact.kind).where(Artifact.run_id == timed_out))
        assert set(kinds) == {"final"}
    dead = utcnow() - timedelta(seconds=1)
    settled = [make_run(status="cancelling", cancel_requested=True, attempts=1,
                        lease_token="a", lease_expires_at=dead),
               make_run(status="running", attempts=3, lease_token="b", lease_expires_at=dead)]
    with db.session_scope() as session:
        for run_id in settled:
            session.add(Artifact(run_id=run_id, kind="checkpoint", epoch=3, data=b"state"))
    swept = reconcile()
    assert (swept["settled"], swept["checkpoints"]) == (2, 2)
    assert [_stored(run_id, get_run(run_id).seq)["artifacts"] for run_id in settled] == [0, 0]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_gives_the_space_back(app: Flask, db_url: str, make_run: Callable[..., str]) -> None:
    """A run of 4 MB of weights deleted: the file is 4 MB smaller after the next pass (new
    databases are made with auto_vacuum=INCREMENTAL)."""
    path = db_url.removeprefix("sqlite:///")

    def file_bytes() -> int:
        with db.engine().connect() as conn:
            assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == db.INCREMENTAL
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return os.path.getsize(path)

    run_id = _finished(make_run, "succeeded", 2 * HOUR)
    with db.session_scope() as session:
        session.get(Artifact, (run_id, "final")).data = os.urandom(4_000_000)
    full = file_bytes()
    app.config["RUN_RETENTION_SECONDS"] = 3600
    swept = reconcile()
    assert swept["deleted"] == 1 and swept["pages"] * 4096 >= 4_000_000
    assert file_bytes() <= full - 4_000_000
    assert reconcile()["pages"] == 0


def test_a_pinned_run_trains_and_is_kept(app: Flask, make_run: Callable[..., str]) -> None:
    """Pinned while queued, trained, then past the age: kept (and unpinned, it goes)."""
    run_id = make_run(training={"epochs": 5}, pinned=True)
    assert train_run(run_id) == "succeeded"
    set_run(run_id, finished_at=utcnow() - 2 * HOUR)
    app.config["RUN_RETENTION_SECONDS"] = 3600
    assert reconcile()["deleted"] == 0
    set_run(run_id, pinned=False)
    assert reconcile()["deleted"] == 1 and get_run(run_id) is None
