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
from service import db
from service.models import Artifact, Dataset, Epoch, LayerStat, utcnow
from tests.worker.rows import add_dataset, add_run, get_run, in_context, set_run
from worker.progress import Progress
from worker.training import train_run


def _count(table: type, run_id: str) -> int:
    with db.session_scope() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(table)
                              .where(table.run_id == run_id))


def _artifacts(run_id: str) -> dict[str, bytes]:
    with db.session_scope() as session:
        rows = session.scalars(sa.select(Artifact).where(Artifact.run_id == run_id)
                               .options(sa.orm.undefer(Artifact.data)))
        return {a.kind: a.data for a in rows}


def _losses(run_id: str) -> list[float]:
    with db.session_scope() as session:
        return list(session.scalars(sa.select(Epoch.train_loss)
                                    .where(Epoch.run_id == run_id).order_by(Epoch.epoch)))


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
    assert _count(LayerStat, run_id) == 30 * 2  # one row per dense layer per epoch
    stored = _artifacts(run_id)
    assert set(stored) == {"final"}  # the checkpoint is dropped once the run succeeded
    model = nn.Model.from_npz(stored["final"])
    assert len(model.predict([[1.0, 1.0]])["labels"]) == 1


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
        numbers = session.scalars(sa.select(Epoch.epoch).where(Epoch.run_id == run_id)
                                  .order_by(Epoch.epoch)).all()
    assert numbers == list(range(1, epochs + 1))
    assert _count(LayerStat, run_id) == 2 * epochs


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
    training = {"epochs": 150, "validation_fraction": 0.2}
    reference = make_run(training=training)
    assert train_run(reference) == "succeeded"

    run_id = make_run(training=training)
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
    weights = [nn.Model.from_npz(_artifacts(r)["final"]).weights for r in (run_id, reference)]
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(*weights) for k in a)
