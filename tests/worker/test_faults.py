"""train_run under faults, in-process: the database failing under a flush, and a warm
shutdown handing the run back. (The same against real processes: tests/e2e/test_faults.py.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from service import db, statstore
from service.models import Artifact, Epoch, EpochStats, of_run, utcnow
from tests.worker.rows import get_run, set_run
from worker import progress as progress_module
from worker import shutdown
from worker import training as training_module
from worker.training import train_run

TRAINING = {"epochs": 60, "validation_fraction": 0.2}


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only: the deployment's database, where connections get cut (SQLite runs
    the same code; these tests are slow enough once)."""
    return pg_url


def _epochs(run_id: str) -> list[int]:
    with db.session_scope() as session:
        return list(session.scalars(sa.select(Epoch.epoch).where(of_run(Epoch, run_id))
                                    .order_by(Epoch.epoch)))


def _losses(run_id: str) -> list[float]:
    with db.session_scope() as session:
        return list(session.scalars(sa.select(Epoch.train_loss)
                                    .where(of_run(Epoch, run_id)).order_by(Epoch.epoch)))


def _stats(run_id: str) -> list[int]:
    """The epochs that have a statistics row."""
    with db.session_scope() as session:
        return list(session.scalars(sa.select(EpochStats.epoch)
                                    .where(of_run(EpochStats, run_id)).order_by(EpochStats.epoch)))


def _thinned(epochs: int, thinned_after: int) -> list[int]:
    """The statistics epochs a run of `epochs` keeps: the rule's, and the last."""
    kept = [e for e in range(1, epochs + 1) if statstore.kept(e, thinned_after)]
    return kept if kept[-1] == epochs else [*kept, epochs]


def _checkpoint_epoch(run_id: str) -> int | None:
    with db.session_scope() as session:
        row = session.get(Artifact, (run_id, "checkpoint"))
        return None if row is None else row.epoch


def _connection_error() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))


@pytest.fixture
def broken_commits(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """`broken_commits(n, applied=...)`: the next n COMMITs of flushes fail with a connection
    error; with applied=True they fail *after* the database committed (the answer was lost).
    Returns the log of what happened."""

    def arm(n: int, *, applied: bool = False, after: int = 3) -> list[str]:
        seen: list[str] = []
        commit = Session.commit
        calls = {"commits": 0}

        def failing_commit(self: Session) -> None:
            calls["commits"] += 1
            if calls["commits"] <= after or len(seen) >= n:
                return commit(self)
            if applied:
                commit(self)
                seen.append("applied")
            else:
                self.rollback()
                seen.append("lost")
            raise _connection_error()

        monkeypatch.setattr(Session, "commit", failing_commit)
        return seen

    return arm


@pytest.mark.parametrize("applied", [False, True], ids=["rolled-back", "committed"])
def test_a_flush_that_fails_on_its_connection_is_written_by_the_next(
    app: Flask, make_run: Callable[..., str], broken_commits: Callable[..., list[str]],
    applied: bool,
) -> None:
    """Rolled back: the rows are kept and written later. Committed but unanswered (the
    ambiguous COMMIT): written again without a duplicate. Either way, one attempt, and every
    epoch once, with the same numbers as an unbroken run.

    FLUSH_SECONDS=0 makes every epoch flush, so the broken COMMITs (those after the claim's,
    the data load's and the first flush's) are flushes 2-5 of 60, however fast the machine
    trains. (With fewer flushes they could reach the final COMMIT: the next test.) The
    statistics are thinned past epoch 8: each flush replaces the latest epoch's row, and a
    flush written again replaces it once."""
    app.config.update(FLUSH_SECONDS=0)
    reference = make_run(training=TRAINING, stats_thinned_after=8)
    assert train_run(reference) == "succeeded"
    run_id = make_run(training=TRAINING, stats_thinned_after=8)
    failures = broken_commits(4, applied=applied)
    assert train_run(run_id) == "succeeded"
    assert len(failures) == 4
    run = get_run(run_id)
    assert (run.attempts, run.epochs_completed) == (1, 60)
    assert _epochs(run_id) == list(range(1, 61))
    assert _stats(run_id) == _stats(reference) == _thinned(60, 8)
    assert _stats(run_id)[-6:] == [28, 32, 40, 48, 56, 60]
    assert _losses(run_id) == _losses(reference)
    assert run.rows_bytes == get_run(reference).rows_bytes  # counted once


@pytest.mark.parametrize("broken", [1, 3], ids=["final", "final-and-the-checks"])
def test_a_final_commit_that_went_through_unanswered_is_recognised(
    make_run: Callable[..., str], broken_commits: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch, broken: int,
) -> None:
    """The final COMMIT goes through but its answer is lost; the next transactions, which
    ask whether it went through, may fail on their connection too (as the first ones after
    an outage do). The worker keeps asking, and the run is recognised as finished: one
    attempt, not given up to be trained again."""
    run_id = make_run(training={"epochs": 5})
    release = training_module.lease.release
    armed: list[list[str]] = []

    def release_then_arm(*args: Any, **kwargs: Any) -> None:
        release(*args, **kwargs)
        if not armed:  # this COMMIT fails, and the next broken - 1 after it
            armed.append(broken_commits(broken, applied=True, after=0))

    monkeypatch.setattr(training_module.lease, "release", release_then_arm)
    assert train_run(run_id) == "succeeded"
    assert armed == [["applied"] * broken]
    run = get_run(run_id)
    assert (run.status, run.attempts, run.lease_token) == ("succeeded", 1, None)


# Where a COMMIT breaks: the function after (or before) which the next COMMIT is broken,
# what train_run does then, and the attempts the run ends with, rolled back / committed.
COMMITS = {
    # The claim: the run is queued again, or running with a lease the worker does not know
    # it holds (so it expires, and the run is taken over as if the worker had died).
    "claim": ("claim", "after", "raises", (1, 2)),
    # Loading the data (a read): the run is left to be resumed once its lease expires.
    "load": ("_load", "before", "lease_lost", (2, 2)),
    # The final COMMIT: asked again until the answer is known (the test above).
    "final": ("release", "after", "succeeded", (1, 1)),
}


@pytest.mark.parametrize("applied", [False, True], ids=["rolled-back", "committed"])
@pytest.mark.parametrize("where", list(COMMITS))
def test_a_commit_that_fails_on_its_connection_anywhere_loses_nothing(
    make_run: Callable[..., str], broken_commits: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch, where: str, applied: bool,
) -> None:
    """Whichever of a run's transactions fails on its connection, rolled back or committed
    unanswered: once the database answers again the run ends as an unbroken one, every
    epoch once, trained again only where the worker could not know it held the run. (The
    flushes: the first test.)"""
    name, when, outcome, attempts = COMMITS[where]
    module = training_module if name == "_load" else training_module.lease
    original = getattr(module, name)
    armed: list[list[str]] = []

    def arm_around(*args: Any, **kwargs: Any) -> Any:
        if when == "before" and not armed:
            armed.append(broken_commits(1, applied=applied, after=0))
        answer = original(*args, **kwargs)
        if when == "after" and not armed:
            armed.append(broken_commits(1, applied=applied, after=0))
        return answer

    run_id = make_run(training={"epochs": 30}, stats_thinned_after=8)
    with monkeypatch.context() as mp:
        mp.setattr(module, name, arm_around)
        if outcome == "raises":
            with pytest.raises(sa.exc.OperationalError):
                train_run(run_id)
        else:
            assert train_run(run_id) == outcome
        assert armed == [["applied" if applied else "lost"]]

    if get_run(run_id).status == "running":  # its lease expires; the reconciler's message
        set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    if get_run(run_id).status != "succeeded":
        assert train_run(run_id) == "succeeded"
    run = get_run(run_id)
    assert (run.status, run.attempts) == ("succeeded", attempts[applied])
    assert _epochs(run_id) == list(range(1, 31))
    assert _stats(run_id) == _thinned(30, 8)


def test_a_database_gone_for_a_whole_lease_gives_the_run_up_to_be_resumed(
    app: Flask, make_run: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    app.config.update(LEASE_SECONDS=0.5)
    epochs = 3000  # full batch: well under a millisecond each
    run_id = make_run(training={"epochs": epochs, "batch_size": None})
    down = threading.Event()

    def unreachable_once_down(scope: Callable[[], Any]) -> Callable[[], Any]:
        def session_scope() -> Any:
            if down.is_set():
                raise _connection_error()
            return scope()
        return session_scope

    on_epoch = progress_module.Progress.on_epoch

    def goes_down_after_a_checkpoint(self: progress_module.Progress, report: Any) -> None:
        on_epoch(self, report)
        if self.stored_epoch >= 5:
            down.set()

    for module in (progress_module, training_module):
        monkeypatch.setattr(module, "session_scope", unreachable_once_down(module.session_scope))
    monkeypatch.setattr(progress_module.Progress, "on_epoch", goes_down_after_a_checkpoint)
    assert train_run(run_id) == "lease_lost"  # gave up, and wrote nothing more
    monkeypatch.undo()

    run = get_run(run_id)
    assert run.status == "running" and run.attempts == 1
    checkpoint = _checkpoint_epoch(run_id)
    assert checkpoint is not None and checkpoint >= 5
    assert _epochs(run_id) == list(range(1, run.epochs_completed + 1))
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    app.config.update(LEASE_SECONDS=30)
    assert train_run(run_id) == "succeeded"  # what the reconciler's message leads to
    assert get_run(run_id).attempts == 2
    assert _epochs(run_id) == list(range(1, epochs + 1))


@pytest.fixture
def shutting_down() -> Iterator[threading.Event]:
    yield shutdown.requested
    shutdown.requested.clear()


def _shut_down_at(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """The worker is told to shut down right after training epoch `epoch` (as SIGUSR2 from
    the Celery main process would tell it, worker/shutdown.py)."""
    on_epoch = progress_module.Progress.on_epoch

    def then_shut_down(self: progress_module.Progress, report: Any) -> None:
        on_epoch(self, report)
        if report.epoch == epoch:
            shutdown.requested.set()

    monkeypatch.setattr(progress_module.Progress, "on_epoch", then_shut_down)


def test_a_worker_shutting_down_hands_its_run_back_from_a_fresh_checkpoint(
    app: Flask, make_run: Callable[..., str], shutting_down: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app.config.update(CHECKPOINT_SECONDS=0.3)
    training = {"epochs": 100, "validation_fraction": 0.2}
    reference = make_run(training=training)
    assert train_run(reference) == "succeeded"
    run_id = make_run(training=training)

    with monkeypatch.context() as mp:
        _shut_down_at(mp, 20)
        assert train_run(run_id) == "handed_back"
    shutting_down.clear()
    run = get_run(run_id)
    assert (run.status, run.lease_token, run.lease_expires_at) == ("queued", None, None)
    assert run.attempts == 0  # a hand-back is not a death
    assert run.published_at is not None  # and another worker was woken for it
    assert run.started_at is not None  # the time limit keeps counting from the first start
    # Stopped where its checkpoint is: nothing to redo, nothing written twice.
    assert 20 <= _checkpoint_epoch(run_id) == run.epochs_completed < 100
    assert _epochs(run_id) == list(range(1, run.epochs_completed + 1))

    assert train_run(run_id) == "succeeded"
    run = get_run(run_id)
    assert run.attempts == 1
    assert _epochs(run_id) == list(range(1, 101))
    assert _losses(run_id) == _losses(reference)
    assert run.metrics == get_run(reference).metrics


def test_a_cancel_wins_over_a_hand_back(
    make_run: Callable[..., str], shutting_down: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = make_run(training={"epochs": 5000})
    should_stop = progress_module.Progress.should_stop

    def cancelled_meanwhile(self: progress_module.Progress) -> str | None:
        answer = should_stop(self)
        if answer == progress_module.SHUTDOWN:
            set_run(run_id, status="cancelling", cancel_requested=True)  # what the API does
        return answer

    _shut_down_at(monkeypatch, 20)
    monkeypatch.setattr(progress_module.Progress, "should_stop", cancelled_meanwhile)
    assert train_run(run_id) == "cancelled"
    run = get_run(run_id)
    assert (run.status, run.lease_token) == ("cancelled", None)
    assert 20 <= run.epochs_completed < 5000
    assert _epochs(run_id) == list(range(1, run.epochs_completed + 1))
