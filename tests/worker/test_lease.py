"""The claim is one compare-and-set; every later write is fenced by the lease token."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

import nn
from service import db
from service.models import Epoch, EpochStats, of_run, utcnow
from tests.worker.rows import get_run, in_context, set_run
from worker import lease
from worker.progress import Progress
from worker.training import train_run

LEASE = {"lease_seconds": 30, "max_attempts": 3, "worker": "test"}


def _claim(run_id: str) -> str | None:
    with db.session_scope() as session:
        return lease.claim(session, run_id, now=utcnow(), **LEASE)


def _expire(run_id: str) -> None:
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))


def _report(epoch: int) -> nn.EpochReport:
    stats = [{"layer": 0, "name": "dense_0", "grad_norm": 1.0}]
    return nn.EpochReport(epoch, "train", 0.5, None, 0.5, None, 0.01, 0.5, stats)


def _rows(run_id: str) -> int:
    with db.session_scope() as session:
        return sum(session.scalar(sa.select(sa.func.count()).select_from(t)
                                  .where(of_run(t, run_id))) for t in (Epoch, EpochStats))


def test_a_queued_run_is_claimed_once(make_run: Callable[..., str]) -> None:
    run_id = make_run()
    token = _claim(run_id)
    assert token is not None
    assert _claim(run_id) is None  # the lease is live: a second message changes nothing
    run = get_run(run_id)
    assert (run.status, run.lease_token, run.attempts, run.worker) == ("running", token, 1, "test")
    assert run.started_at is not None and run.lease_expires_at > utcnow()


def test_concurrent_claims_have_one_winner(make_run: Callable[..., str]) -> None:
    run_id = make_run()
    barrier = threading.Barrier(4)
    tokens: list[str | None] = []

    def claim() -> None:
        barrier.wait()
        tokens.append(_claim(run_id))

    threads = [threading.Thread(target=in_context(claim)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([t for t in tokens if t is not None]) == 1
    assert get_run(run_id).attempts == 1


def test_a_duplicate_message_is_dropped(make_run: Callable[..., str]) -> None:
    run_id = make_run()
    assert train_run(run_id) == "succeeded"
    before = get_run(run_id)
    assert train_run(run_id) == "dropped"
    after = get_run(run_id)
    assert (after.status, after.attempts, after.finished_at) == (
        "succeeded", 1, before.finished_at)


def test_a_stale_lease_is_taken_over_and_the_old_worker_writes_nothing(
    make_run: Callable[..., str],
) -> None:
    run_id = make_run()
    old = _claim(run_id)
    _expire(run_id)
    new = _claim(run_id)
    assert new is not None and new != old
    seq = get_run(run_id).seq
    assert get_run(run_id).attempts == 2

    # The old worker wakes up and flushes an epoch: its transaction is fenced off.
    stale = Progress(lease.Held(run_id, seq, old, 30, 1.0, 10.0, deadline=float("inf")), epoch=0)
    stale.on_epoch(_report(1))
    with pytest.raises(lease.LeaseLost):
        stale.flush()
    assert _rows(run_id) == 0
    run = get_run(run_id)
    assert (run.lease_token, run.epochs_completed) == (new, 0)

    # The new owner's flush goes through.
    live = Progress(lease.Held(run_id, seq, new, 30, 1.0, 10.0, deadline=float("inf")), epoch=0)
    live.on_epoch(_report(1))
    live.flush()
    assert _rows(run_id) == 2 and get_run(run_id).epochs_completed == 1


def test_a_finished_run_is_never_claimed(make_run: Callable[..., str]) -> None:
    run_id = make_run(status="succeeded", lease_expires_at=utcnow() - timedelta(hours=1))
    assert _claim(run_id) is None


def test_the_attempt_cap_fails_the_run(make_run: Callable[..., str]) -> None:
    run_id = make_run(status="running", attempts=3, lease_token="dead",
                      lease_expires_at=utcnow() - timedelta(seconds=1))
    assert train_run(run_id) == "settled"
    run = get_run(run_id)
    assert (run.status, run.error_code, run.attempts) == ("failed", "worker_lost", 3)
    assert run.lease_token is None and run.finished_at is not None


def test_a_cancelling_run_whose_worker_died_ends_cancelled(
    make_run: Callable[..., str],
) -> None:
    run_id = make_run(status="cancelling", cancel_requested=True, attempts=1,
                      lease_token="dead", lease_expires_at=utcnow() - timedelta(seconds=1))
    assert train_run(run_id) == "settled"
    assert get_run(run_id).status == "cancelled"
