"""train_run end to end in-process: progress, outcomes, failures, resume after a death."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask

import nn
from service import dataio, db, statstore, usage
from service.db import connection_lost
from service.models import (
    PARAM_STAT_FIELDS,
    Artifact,
    Dataset,
    Epoch,
    EpochStats,
    of_run,
    utcnow,
)
from tests.worker.rows import add_dataset, add_run, get_run, in_context, set_run
from worker import lease
from worker import progress as progress_module
from worker.progress import Progress, write_epochs
from worker.training import train_run


def _count(table: type, run_id: str) -> int:
    with db.session_scope() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(table)
                              .where(of_run(table, run_id)))


def _artifacts(run_id: str) -> dict[str, bytes]:
    with db.session_scope() as session:
        rows = session.scalars(sa.select(Artifact).where(Artifact.run_id == run_id)
                               .options(sa.orm.undefer(Artifact.data)))
        return {a.kind: a.data for a in rows}


def _losses(run_id: str) -> list[float]:
    with db.session_scope() as session:
        return list(session.scalars(sa.select(Epoch.train_loss)
                                    .where(of_run(Epoch, run_id)).order_by(Epoch.epoch)))


@contextmanager
def _statements(pattern: str) -> Iterator[list[str]]:
    """The SQL statements (and COMMITs, with pattern "COMMIT") run meanwhile."""
    seen: list[str] = []
    engine = db.engine()

    def on_sql(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith(pattern.upper()):
            seen.append(statement)

    def on_commit(_conn) -> None:  # noqa: ANN001
        seen.append("COMMIT")

    hook, fn = ("commit", on_commit) if pattern == "COMMIT" else ("before_cursor_execute", on_sql)
    sa.event.listen(engine, hook, fn)
    try:
        yield seen
    finally:
        sa.event.remove(engine, hook, fn)


def test_xor_trains_and_everything_is_stored(make_run: Callable[..., str]) -> None:
    run_id = make_run(training={"epochs": 30})
    assert train_run(run_id) == "succeeded"
    run = get_run(run_id)
    assert (run.status, run.epochs_completed, run.error_code) == ("succeeded", 30, None)
    assert run.metrics["epochs_completed"] == 30 and run.metrics["train_loss"] > 0
    assert run.lease_token is None and run.finished_at >= run.started_at
    assert _count(Epoch, run_id) == 30
    assert _count(EpochStats, run_id) == 30  # every layer of an epoch in one row
    stored = _artifacts(run_id)
    assert set(stored) == {"final"}  # the checkpoint is dropped once the run succeeded
    model = nn.Model.from_npz(stored["final"])
    assert len(model.predict([[1.0, 1.0]])["labels"]) == 1
    assert run.rows_bytes == _rows_bytes(run_id) > 30 * usage.EPOCH_ROW_BYTES


def _rows_bytes(run_id: str) -> int:
    """What the run's rows count toward its tenant's stored bytes, counted afresh."""
    with db.session_scope() as session:
        stats = session.execute(sa.select(EpochStats.layout, EpochStats.figures)
                                .where(of_run(EpochStats, run_id))).all()
    return _count(Epoch, run_id) * usage.EPOCH_ROW_BYTES + sum(
        usage.STATS_ROW_BYTES + len(layout) + len(figures) for layout, figures in stats)


def test_a_run_past_its_tenants_quota_trains_on(
    app: Flask, make_run: Callable[..., str],
) -> None:
    """The quota refuses new data sets and runs; a run in training finishes, and its rows
    are counted."""
    app.config["TENANT_MAX_STORED_BYTES"] = 1
    run_id = make_run(training={"epochs": 30})
    assert train_run(run_id) == "succeeded"
    assert get_run(run_id).rows_bytes == _rows_bytes(run_id) > 1


def test_many_tiny_epochs_are_written_in_few_transactions(
    app: Flask, make_run: Callable[..., str],
) -> None:
    app.config.update(FLUSH_SECONDS=0.1, CHECKPOINT_SECONDS=0.2)
    epochs = 3000  # full batch: well under a millisecond each
    run_id = make_run(training={"epochs": epochs, "batch_size": None})
    started = time.monotonic()
    with _statements("COMMIT") as commits, _statements("INSERT INTO artifacts") as checkpoints:
        assert train_run(run_id) == "succeeded"
    seconds = time.monotonic() - started
    assert len(commits) < epochs / 20, f"{len(commits)} transactions for {epochs} epochs"
    # Checkpoints follow the clock (at most one per CHECKPOINT_SECONDS / 2), not the epochs.
    assert 1 <= len(checkpoints) - 1 <= seconds / 0.1 + 1  # - 1: the final weights
    with db.session_scope() as session:
        numbers = session.scalars(sa.select(Epoch.epoch).where(of_run(Epoch, run_id))
                                  .order_by(Epoch.epoch)).all()
    assert numbers == list(range(1, epochs + 1))
    assert _count(EpochStats, run_id) == epochs


def test_cancel_stops_a_running_run_and_keeps_its_weights(
    make_run: Callable[..., str],
) -> None:
    run_id = make_run(training={"epochs": 5000})
    outcome: list[str] = []
    worker = threading.Thread(target=in_context(lambda: outcome.append(train_run(run_id))))
    worker.start()
    deadline = time.monotonic() + 30
    while get_run(run_id).epochs_completed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    set_run(run_id, status="cancelling", cancel_requested=True)  # what the API does
    worker.join(timeout=30)
    assert outcome == ["cancelled"]
    run = get_run(run_id)
    assert run.status == "cancelled" and 0 < run.epochs_completed < 5000
    assert _count(Epoch, run_id) == run.epochs_completed
    assert "final" in _artifacts(run_id)


def test_a_run_past_its_deadline_fails_with_timeout(
    app: Flask, make_run: Callable[..., str],
) -> None:
    app.config["RUN_TIME_LIMIT_SECONDS"] = 0.5
    run_id = make_run(training={"epochs": 5000})
    assert train_run(run_id) == "failed"
    run = get_run(run_id)
    assert run.error_code == "timeout" and 0 < run.epochs_completed < 5000
    assert _count(Epoch, run_id) == run.epochs_completed
    assert "final" in _artifacts(run_id)


def test_divergence_fails_the_run(app: Flask) -> None:
    dataset = add_dataset(regression=True)
    net = {"layers": [{"type": "dense", "units": 4, "activation": "relu"},
                      {"type": "dense", "units": 1, "activation": "linear"}]}
    run_id = add_run(dataset, net, {"optimizer": {"type": "sgd", "learning_rate": 5.0}})
    assert train_run(run_id) == "failed"
    run = get_run(run_id)
    assert run.error_code == "diverged" and "diverged" in run.error_message


def test_a_data_set_that_no_longer_loads_fails_with_invalid_data(
    dataset: str, make_run: Callable[..., str],
) -> None:
    run_id = make_run()
    with db.session_scope() as session:
        session.execute(sa.update(Dataset).where(Dataset.id == dataset).values(data=b"junk"))
    assert train_run(run_id) == "failed"
    run = get_run(run_id)
    assert run.error_code == "invalid_data" and run.lease_token is None


def test_a_spec_that_no_longer_builds_fails_with_invalid_data(
    make_run: Callable[..., str],
) -> None:
    run_id = make_run()
    wrong = {"layers": [{"type": "dense", "units": 3, "activation": "softmax"}]}
    set_run(run_id, network=wrong)  # e.g. a spec stored by an older, laxer version
    assert train_run(run_id) == "failed"
    run = get_run(run_id)
    assert run.error_code == "invalid_data" and "network.layers[0]" in run.error_message


def test_an_unexpected_error_fails_the_run_visibly(make_run: Callable[..., str]) -> None:
    run_id = make_run()
    with db.session_scope() as session:
        session.add(Artifact(run_id=run_id, kind="checkpoint", epoch=3, data=b"not npz"))
    with pytest.raises(ValueError, match="not a checkpoint"):
        train_run(run_id)  # raised, so Celery logs the traceback
    run = get_run(run_id)
    assert (run.status, run.error_code) == ("failed", "internal_error")
    assert "not a checkpoint" in run.error_message


def test_initial_weights_with_zero_epochs_are_served_as_they_are(
    make_run: Callable[..., str],
) -> None:
    source = make_run()
    assert train_run(source) == "succeeded"
    trained = _artifacts(source)["final"]
    run_id = make_run(training={"epochs": 0}, initial=trained)
    assert train_run(run_id) == "succeeded"
    before = nn.Model.from_npz(trained).weights
    after = nn.Model.from_npz(_artifacts(run_id)["final"]).weights
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(before, after) for k in a)
    assert get_run(run_id).epochs_completed == 0


class Killed(BaseException):
    """A worker process dying: nothing in the worker catches it."""


def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(
    make_run: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the reference engine: epochs long enough that flushes and checkpoints come mid-run
    training = {"epochs": 150, "validation_fraction": 0.2, "engine": "reference"}
    reference = make_run(training=training, stats_thinned_after=20)
    assert train_run(reference) == "succeeded"

    run_id = make_run(training=training, stats_thinned_after=20)
    on_epoch = Progress.on_epoch

    def dies_after_a_checkpoint(self: Progress, report: nn.EpochReport) -> None:
        on_epoch(self, report)
        if self.stored_epoch and not self.buffer and self.epoch > self.stored_epoch:
            raise Killed  # just after a flush that wrote rows past the stored checkpoint

    monkeypatch.setattr(Progress, "on_epoch", dies_after_a_checkpoint)
    with pytest.raises(Killed):
        train_run(run_id)
    monkeypatch.undo()
    dead = get_run(run_id)
    with db.session_scope() as session:
        checkpoint = session.get(Artifact, (run_id, "checkpoint")).epoch
    assert dead.status == "running" and dead.epochs_completed > checkpoint
    assert _count(Epoch, run_id) == dead.epochs_completed  # the resume deletes the surplus

    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))  # the lease runs out
    assert train_run(run_id) == "succeeded"
    run, ref = get_run(run_id), get_run(reference)
    assert run.attempts == 2 and run.metrics == ref.metrics
    assert _losses(run_id) == _losses(reference)  # every epoch once, the same numbers
    assert run.rows_bytes == ref.rows_bytes == _rows_bytes(run_id)  # what they count, too
    reports, _ = _engine_reports(reference)  # statistics: the same epochs, the same numbers
    assert _stored_stats(run_id) == _stored_stats(reference) == _expected_stats(
        _thinned(reports, 20))
    assert [e for _, e, layer, _ in _stored_stats(run_id)[0] if layer == 0][-4:] == [
        128, 136, 144, 150]
    weights = [nn.Model.from_npz(_artifacts(r)["final"]).weights for r in (run_id, reference)]
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(*weights) for k in a)


# ---- what a long run stores -------------------------------------------------------------------

# The demo (#19): XOR, four hidden layers of four sigmoid units, 80 samples an epoch.
DEMO_NET = {"layers": [{"type": "dense", "units": 4, "activation": "sigmoid"}] * 4
            + [{"type": "dense", "units": 1, "activation": "sigmoid"}]}
DEMO_EPOCHS = 100_000
# What a database may hold after the demo, on either backend (bench/STORAGE.md has what each
# holds: the epoch rows, every one kept, are most of it).
DEMO_BYTES = 20_000_000


def test_the_demo_of_100000_epochs_stores_at_most_20_mb(app: Flask, db_url: str) -> None:
    """The demo with its statistics thinned as a run of 100,000 epochs thins them: the
    worker trains 1,200 epochs, then the other 98,800 epochs' rows are written as its
    flushes would write them (500 epochs a flush, the last epoch's figures again: every
    epoch's rows have the same size); the rows are those the rule keeps, and the database
    grows by at most the bound, data set, run and weights included. (bench/storage.py
    trains all 100,000: bench/STORAGE.md.)"""
    app.config.update(FLUSH_SECONDS=1.0, CHECKPOINT_SECONDS=10.0)  # as deployed
    with db.engine().connect() as conn:
        empty = db.table_bytes(conn)
    thinned_after, trained = statstore.thinned_after(DEMO_EPOCHS, 2000), 1200
    run_id = add_run(add_dataset("xor", 100), DEMO_NET,
                     {"epochs": trained, "validation_fraction": 0.2},
                     stats_thinned_after=thinned_after)
    assert train_run(run_id) == "succeeded"
    assert (thinned_after, _count(EpochStats, run_id)) == (402, 402 + 201 + 99)
    with db.session_scope() as session:
        key = (get_run(run_id).seq, "train", trained)
        last = session.get(Epoch, key)
        stats = statstore.rows(session.get(EpochStats, key))
    for start in range(trained + 1, DEMO_EPOCHS + 1, 500):
        reports = [nn.EpochReport(e, "train", last.train_loss, last.val_loss,
                                  last.train_accuracy, last.val_accuracy, last.duration_s,
                                  last.learning_rate, stats)
                   for e in range(start, min(start + 500, DEMO_EPOCHS + 1))]
        with db.session_scope() as session:
            write_epochs(session, key[0], reports, thinned_after=thinned_after)
    assert _count(Epoch, run_id) == DEMO_EPOCHS
    assert _count(EpochStats, run_id) == statstore.kept_count(DEMO_EPOCHS, thinned_after) == 1999
    with db.engine().connect() as conn:
        grown = {t: n - empty.get(t, 0) for t, n in db.table_bytes(conn).items()}
    assert grown["epoch_stats"] <= 1999 * 5 * 150  # at most 150 bytes a layer and epoch
    assert sum(grown.values()) <= DEMO_BYTES, grown


# ---- the deep structures: per-array statistics, pretraining ---------------------------------

LSTM_NET = {"layers": [{"type": "lstm", "units": 4},
                       {"type": "dense", "units": 2, "activation": "softmax"}]}
LSTM_TRAINING = {"loss": "cross_entropy", "optimizer": {"type": "adam", "learning_rate": 0.01},
                 "batch_size": 16, "epochs": 3}
# Three hidden sigmoid layers pretrained 10 epochs each (pretraining epochs 1..30), then 20
# epochs of fine-tuning.
DEEP_NET = {"layers": [{"type": "dense", "units": 4, "activation": "sigmoid"}] * 3
            + [{"type": "dense", "units": 1, "activation": "sigmoid"}]}
PRETRAINED = {"epochs": 20, "validation_fraction": 0.2,
              "optimizer": {"type": "sgd", "learning_rate": 0.1},
              "pretrain": {"epochs": 10, "optimizer": {"type": "adam", "learning_rate": 0.01}}}


def _engine_reports(run_id: str) -> tuple[list[nn.EpochReport], nn.TrainResult]:
    """What the engine reports for the run's plan and data, trained here without a worker."""
    run = get_run(run_id)
    with db.session_scope() as session:
        dataset = session.get(Dataset, run.dataset_id)
        (inputs, targets), task = dataio.decode(dataset.data), dataset.task
    reports: list[nn.EpochReport] = []
    plan = nn.build(run.network, run.training, nn.describe(inputs, targets, task=task))
    return reports, nn.train(plan, inputs, targets, on_epoch=reports.append)


def _stored_stats(run_id: str) -> tuple[list[tuple], list[tuple]]:
    """(phase, epoch, layer, grad_norm_by_time) of every stored layer row, and (phase, epoch,
    layer, param, *statistics) of every per-array entry, in order."""
    with db.session_scope() as session:
        rows = [row for stats in session.scalars(
            sa.select(EpochStats).where(of_run(EpochStats, run_id))
            .order_by(EpochStats.phase, EpochStats.epoch)) for row in statstore.rows(stats)]
    return [(r["phase"], r["epoch"], r["layer"], r["grad_norm_by_time"]) for r in rows], [
        (r["phase"], r["epoch"], r["layer"], p["param"], *(p[f] for f in PARAM_STAT_FIELDS))
        for r in rows for p in r["params"]]


def _float32(value: float | None) -> float | None:
    """A figure as stored (float32, read back as its shortest decimal; NaN as null)."""
    return None if value is None or not np.isfinite(value) else float(str(np.float32(value)))


def _expected_stats(reports: list[nn.EpochReport]) -> tuple[list[tuple], list[tuple]]:
    ordered = sorted(reports, key=lambda r: (r.phase, r.epoch))
    layers = [(r.phase, r.epoch, s["layer"], s.get("grad_norm_by_time") and
               [_float32(v) for v in s["grad_norm_by_time"]])
              for r in ordered for s in r.layer_stats]
    params = [(r.phase, r.epoch, s["layer"], p["param"],
               *(_float32(p[f]) for f in PARAM_STAT_FIELDS))
              for r in ordered for s in r.layer_stats for p in s["params"]]
    return layers, params


def _thinned(reports: list[nn.EpochReport], thinned_after: int) -> list[nn.EpochReport]:
    """The reports whose statistics a run keeps: the rule's, and each phase's last."""
    last = {r.phase: r.epoch for r in reports}
    return [r for r in reports
            if statstore.kept(r.epoch, thinned_after) or r.epoch == last[r.phase]]


def test_an_lstm_run_stores_per_array_stats_and_the_gradient_norm_by_time(app: Flask) -> None:
    dataset = add_dataset("parity", 48)  # sequences of 8 steps
    run_id = add_run(dataset, LSTM_NET, LSTM_TRAINING)
    assert train_run(run_id) == "succeeded"
    layers, params = _stored_stats(run_id)
    assert (layers, params) == _expected_stats(_engine_reports(run_id)[0])  # the very numbers
    assert [p[3] for p in params[:5]] == ["Wx", "Wh", "b", "W", "b"]  # the layers' own order
    assert len(params) == 3 * 5
    assert [len(by_time) for _, _, layer, by_time in layers if layer == 0] == [8] * 3
    assert [by_time for _, _, layer, by_time in layers if layer == 1] == [None] * 3


def test_calibration_measures_pretraining_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long pretraining need not checkpoint after each of its epochs: its epochs fix the
    checkpoint interval as training epochs do (no database: nothing is due to be written)."""
    monkeypatch.setattr(progress_module, "CALIBRATE_SECONDS", 0.0)
    held = lease.Held("run", 1, "token", 30, float("inf"), 10.0, deadline=float("inf"))
    progress = Progress(held, epoch=0)
    progress.on_epoch(nn.EpochReport(1, "pretrain", 0.5, None, None, None, 0.001, 0.01, [],
                                     layer=0))
    assert progress.position == ("pretrain", 1)
    assert progress.should_stop() == progress_module.CALIBRATED
    assert progress.every == 10_000  # CHECKPOINT_SECONDS / the epoch's duration


def test_rows_are_written_once_and_non_finite_numbers_as_null(make_run: Callable[..., str]) -> None:
    """A flush written again after an ambiguous COMMIT replaces its rows (the per-array
    statistics are a part of their layer rows); NaN and infinities are stored as null on both
    backends (a PostgreSQL JSON column refuses NaN)."""
    run_id = make_run()
    seq = get_run(run_id).seq
    row = {"layer": 0, "name": "rnn_0", "grad_norm": float("inf"),
           "grad_norm_by_time": [1.0, float("nan"), float("inf")],
           "params": [{"param": "Wx", "grad_norm": float("nan"), "weight_norm": 2.0},
                      {"param": "Wh", "grad_norm": 1.0, "weight_norm": 3.0}]}
    report = nn.EpochReport(1, "train", 0.5, None, 0.5, None, 0.01, 0.5, [row])
    for replace in (False, True):
        with db.session_scope() as session:
            write_epochs(session, seq, [report], replace=replace)
    layers, params = _stored_stats(run_id)
    assert layers == [("train", 1, 0, [1.0, None, None])]
    assert [(p[3], p[5], p[9]) for p in params] == [("Wx", None, 2.0), ("Wh", 1.0, 3.0)]
    with pytest.raises(sa.exc.IntegrityError):
        with db.session_scope() as session:
            write_epochs(session, seq, [report])  # without replace: the keys refuse it


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_rows_cut_off_from_their_connection_are_a_connection_error(
    make_run: Callable[..., str],
) -> None:
    """PostgreSQL takes the rows by COPY, on the driver's connection: a connection lost under
    it is still the error a flush keeps its rows for (to write them again), and the pool
    gives the next transaction a working connection."""
    run_id = make_run()
    seq = get_run(run_id).seq
    row = {"layer": 0, "name": "dense_0", "grad_norm": 1.0, "params": [{"param": "W"}]}
    report = nn.EpochReport(1, "train", 0.5, None, 0.5, None, 0.01, 0.5, [row])
    with pytest.raises(sa.exc.DBAPIError) as caught:
        with db.session_scope() as session:
            pid = session.scalar(sa.text("SELECT pg_backend_pid()"))
            with db.engine().connect() as other:  # and wait (up to 5 s) until it is gone
                assert other.scalar(sa.text("SELECT pg_terminate_backend(:pid, 5000)"),
                                    {"pid": pid})
            write_epochs(session, seq, [report])
    assert connection_lost(caught.value) and caught.value.statement.startswith("COPY")
    with db.session_scope() as session:
        write_epochs(session, seq, [report])
    assert (_count(Epoch, run_id), _count(EpochStats, run_id)) == (1, 1)
    assert _stored_stats(run_id)[1] == [("train", 1, 0, "W", *[None] * 8)]


def test_statistics_past_the_threshold_keep_the_rules_epochs_and_the_latest(
    make_run: Callable[..., str],
) -> None:
    """Past T = 4: every 2nd epoch up to 8, every 4th up to 16, ...; each flush's latest
    epoch of a phase is kept until the next flush replaces it, also when that flush comes
    after a resume (the latest is then the checkpoint's epoch) or is written again after an
    ambiguous COMMIT; pretraining's last epoch stays."""
    run_id = make_run()
    seq = get_run(run_id).seq
    row = {"layer": 0, "name": "dense_0", "params": [{"param": "W"}, {"param": "b"}]}

    def flush(phase: str, epochs: range, *, replace: bool = False) -> list[tuple[str, int]]:
        reports = [nn.EpochReport(e, phase, 0.5, None, None, None, 0.01, 0.5, [row])
                   for e in epochs]
        with db.session_scope() as session:
            write_epochs(session, seq, reports, replace=replace, thinned_after=4)
        with db.session_scope() as session:
            return [tuple(k) for k in session.execute(
                sa.select(EpochStats.phase, EpochStats.epoch).where(of_run(EpochStats, run_id))
                .order_by(EpochStats.phase, EpochStats.epoch))]

    assert [statstore.kept(e, 4) for e in range(1, 18)] == [
        True] * 4 + [False, True, False, True] + [False, False, False, True] * 2 + [False]
    pre = [("pretrain", 1), ("pretrain", 2), ("pretrain", 3)]
    assert flush("pretrain", range(1, 4)) == pre
    assert flush("train", range(1, 6)) == pre + [("train", e) for e in (1, 2, 3, 4, 5)]
    kept = pre + [("train", e) for e in (1, 2, 3, 4, 6, 8)]
    assert flush("train", range(6, 10)) == [*kept, ("train", 9)]
    with db.session_scope() as session:  # a new worker resumes from a checkpoint at 9
        lease.forget_after(session, run_id, "train", 9)
    assert flush("train", range(10, 12)) == [*kept, ("train", 11)]
    assert flush("train", range(10, 12), replace=True) == [*kept, ("train", 11)]
    assert flush("train", range(12, 18)) == [*kept, ("train", 12), ("train", 16), ("train", 17)]


def test_forgetting_after_a_checkpoint_follows_the_phases(make_run: Callable[..., str]) -> None:
    """A checkpoint at pretraining epoch p keeps pretraining epochs 1..p and no training
    epoch; one at training epoch e keeps every pretraining epoch and training epochs 1..e.
    Per-array rows go with their layer rows."""
    run_id = make_run()
    seq = get_run(run_id).seq
    row = {"layer": 0, "name": "dense_0", "params": [{"param": "W"}, {"param": "b"}]}
    reports = [nn.EpochReport(e, phase, 0.5, None, None, None, 0.01, 0.5, [row])
               for phase, n in (("pretrain", 6), ("train", 4)) for e in range(1, n + 1)]
    with db.session_scope() as session:
        write_epochs(session, seq, reports)

    def kept() -> list[tuple[str, int]]:
        layers, params = _stored_stats(run_id)
        assert [p[:3] for p in params] == [k[:3] for k in layers for _ in "Wb"]
        with db.session_scope() as session:
            epochs = session.execute(sa.select(Epoch.phase, Epoch.epoch).where(
                of_run(Epoch, run_id)).order_by(Epoch.phase, Epoch.epoch)).all()
        assert [tuple(e) for e in epochs] == [k[:2] for k in layers]
        return [tuple(e) for e in epochs]

    for phase, epoch, expected, completed in (
            ("train", 2, [("pretrain", e) for e in range(1, 7)] + [("train", 1), ("train", 2)], 2),
            ("pretrain", 3, [("pretrain", e) for e in range(1, 4)], 0),
            ("pretrain", 3, [("pretrain", e) for e in range(1, 4)], 0),  # nothing to forget
            ("pretrain", 0, [], 0)):
        with db.session_scope() as session:
            lease.forget_after(session, run_id, phase, epoch)
        assert kept() == expected
        assert get_run(run_id).epochs_completed == completed
    # Each forgetting that deleted rows is recorded, for the event streams (not the no-op).
    assert get_run(run_id).rewinds == [["train", 2], ["pretrain", 3], ["pretrain", 0]]


@pytest.mark.parametrize(("phase", "after"), [("pretrain", 15), ("train", 5)])
def test_a_pretrained_run_resumes_where_it_stopped(
    app: Flask, monkeypatch: pytest.MonkeyPatch, phase: str, after: int,
) -> None:
    """A worker dies after a checkpoint taken while pretraining (mid-layer: the decoder's
    state is in it) or while fine-tuning, with rows written past it. The next one resumes
    from that checkpoint: pretraining is not redone (from a fine-tuning checkpoint, not at
    all), every epoch of both phases is stored once, and everything (rows, statistics,
    weights) is what an uninterrupted run stores, and what the engine computes alone."""
    dataset = add_dataset("gaussian", 100)
    with monkeypatch.context() as mp:
        mp.setattr(progress_module, "CALIBRATE_SECONDS", 0.0)  # a calibration stop at once,
        reference = add_run(dataset, DEEP_NET, PRETRAINED,    # while pretraining
                            stats_thinned_after=4)
        assert train_run(reference) == "succeeded"
    reports, alone = _engine_reports(reference)
    assert _stored_stats(reference) == _expected_stats(_thinned(reports, 4))
    weights = nn.Model.from_npz(_artifacts(reference)["final"]).weights
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(weights, alone.weights) for k in a)

    run_id = add_run(dataset, DEEP_NET, PRETRAINED, stats_thinned_after=4)
    app.config.update(FLUSH_SECONDS=0, CHECKPOINT_SECONDS=0)  # rows and a checkpoint each epoch
    on_epoch = Progress.on_epoch

    def dies_past_a_checkpoint(self: Progress, report: nn.EpochReport) -> None:
        on_epoch(self, report)  # flushes this epoch's row at once; its checkpoint comes next
        if self.stored >= (phase, after) and self.position > self.stored:
            raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(Progress, "on_epoch", dies_past_a_checkpoint)
        with pytest.raises(Killed):
            train_run(run_id)
    with db.session_scope() as session:
        checkpoint = session.get(Artifact, (run_id, "checkpoint"))
        assert (checkpoint.phase, checkpoint.epoch) == (phase, after)
        assert nn.checkpoint_position(checkpoint.data) == (phase, after)
    assert _count(Epoch, run_id) == (30 if phase == "train" else 0) + after + 1  # one past it

    app.config.update(FLUSH_SECONDS=0.05, CHECKPOINT_SECONDS=0.2)
    resumed: list[tuple[str, int]] = []

    def records(self: Progress, report: nn.EpochReport) -> None:
        resumed.append((report.phase, report.epoch))
        on_epoch(self, report)

    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))  # the lease runs out
    with monkeypatch.context() as mp:
        mp.setattr(Progress, "on_epoch", records)
        assert train_run(run_id) == "succeeded"
    assert resumed[0] == (phase, after + 1)  # nothing before the checkpoint again
    run, ref = get_run(run_id), get_run(reference)
    assert run.attempts == 2 and run.metrics == ref.metrics
    with db.session_scope() as session:
        rows = [session.execute(sa.select(Epoch.phase, Epoch.epoch, Epoch.layer, Epoch.train_loss,
                                          Epoch.val_loss).where(of_run(Epoch, r))
                                .order_by(Epoch.phase, Epoch.epoch)).all()
                for r in (run_id, reference)]
    assert rows[0] == rows[1]
    assert [r[:3] for r in rows[0][:11]] == [("pretrain", e, (e - 1) // 10) for e in range(1, 12)]
    assert len(rows[0]) == 30 + 20
    assert _stored_stats(run_id) == _stored_stats(reference)
    final = nn.Model.from_npz(_artifacts(run_id)["final"]).weights
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(final, weights) for k in a)
