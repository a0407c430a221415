"""The lease on a job: claim it, prove we still hold it, give it up; settle abandoned jobs.

A job is a training run (`Run`, the default of every function here) or a batch prediction
(`Prediction`): both have the same status and lease columns, and the same functions claim,
fence, release and settle them, given the job's class as `job`. Below, "run" stands for
either.

A worker owns a run while `lease_expires_at` is in the future, and every write it makes runs
in a transaction that starts with `fence` (an UPDATE ... WHERE lease_token = ours), so a worker
that lost its lease (paused, partitioned, presumed dead) changes nothing. Each statement here
is one compare-and-set, safe when any number of workers and reconcilers race.

Every status change here also records its webhook event (run.started at a run's first
claim, run.succeeded / failed / cancelled at its end; prediction.* for a prediction) in the
same transaction (service.webhooks.emit_status), so an event exists exactly when its change
does.

Times are the workers' clocks in UTC (one source of time for every comparison; the database's
clock would need per-backend SQL), so their skew must stay well under LEASE_SECONDS.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from time import monotonic

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.models import (
    Epoch,
    EpochStats,
    Prediction,
    Run,
    UTCDateTime,
    of_run,
    utcnow,
)
from service.webhooks import emit_status

log = logging.getLogger(__name__)

Job = type[Run] | type[Prediction]

# ORM-enabled UPDATEs without looking for matching objects in the session (there are none).
NO_SYNC = {"synchronize_session": False}
# While writes keep failing, one warning per this many seconds.
WARN_EVERY_SECONDS = 5.0


class LeaseLost(Exception):
    """Another worker owns the run now; stop without writing anything else."""


@dataclass
class Held:
    """A lease a worker holds on a run, the settings its writes follow, and what became of its
    last writes."""

    run_id: str
    run_seq: int  # the run's number in its rows (Run.seq)
    token: str
    lease_seconds: float
    flush_seconds: float
    checkpoint_seconds: float
    deadline: float  # monotonic() time past which the run times out
    cancel: bool = False  # the cancel flag, as of the last flush
    # monotonic() time of the last renewal that committed (the claim, at first): from then
    # on the lease in the database lasts lease_seconds.
    renewed: float = field(default_factory=monotonic)
    failing_since: float | None = None  # monotonic() time of the first of failing writes
    _warned: float = 0.0

    def fence(self, session: Session, epochs_completed: int) -> None:
        self.cancel = fence(
            session, self.run_id, self.token, now=utcnow(),
            lease_seconds=self.lease_seconds, epochs_completed=epochs_completed,
        )

    def unreachable(self, exc: BaseException) -> None:
        """A write failed on its connection: carry on while the lease may still be ours,
        give the run up (LeaseLost) once it has surely expired."""
        if monotonic() - self.renewed >= self.lease_seconds:
            log.warning("run %s: no write for the whole lease (%s s); giving the run up: "
                        "whoever claims it next resumes it from its last checkpoint",
                        self.run_id, self.lease_seconds)
            raise LeaseLost(self.run_id) from exc
        if self.failing_since is None or monotonic() - self._warned >= WARN_EVERY_SECONDS:
            log.warning("run %s: database write failed (%s: %s); keeping the rows to try "
                        "again", self.run_id, type(exc).__name__,
                        (str(exc).splitlines() or [""])[0])
            self._warned = monotonic()
        if self.failing_since is None:
            self.failing_since = monotonic()

    def reached(self, started: float) -> None:
        """A write that began at monotonic() time `started` committed: the lease is renewed."""
        self.renewed = started
        if self.failing_since is not None:
            log.info("run %s: database writes resumed after %.1f s", self.run_id,
                     monotonic() - self.failing_since)
            self.failing_since = None


def at(t: datetime) -> sa.ColumnElement:
    """A bind parameter of type UTCDateTime (so SQLite compares it as it stores it)."""
    return sa.literal(t, UTCDateTime())


def abandoned(now: datetime, job: Job = Run) -> sa.ColumnElement[bool]:
    """A running run whose worker stopped renewing its lease."""
    return sa.and_(job.status == "running", job.lease_expires_at < at(now))


def claim(session: Session, run_id: str, *, now: datetime, lease_seconds: float,
          max_attempts: int, worker: str, job: Job = Run) -> str | None:
    """Take a queued or abandoned run: its new lease token, or None (not ours to train)."""
    token = str(uuid.uuid4())
    result = session.execute(
        sa.update(job)
        .where(
            job.id == run_id,
            sa.or_(job.status == "queued", abandoned(now, job)),
            job.attempts < max_attempts,
        )
        .values(
            status="running",
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempts=job.attempts + 1,
            started_at=sa.func.coalesce(job.started_at, at(now)),
            worker=worker[:200],
        ),
        execution_options=NO_SYNC,
    )
    if result.rowcount != 1:
        return None
    row = session.get(job, run_id, populate_existing=True)
    if row is not None and row.started_at == now:  # its first claim: set just now
        emit_status(session, row)
    return token


def fence(session: Session, run_id: str, token: str, *, now: datetime,
          lease_seconds: float, job: Job = Run, **progress: int) -> bool:
    """Renew the lease and record progress (`progress`: columns, e.g. epochs_completed of a
    run, rows_done of a prediction), first thing in a transaction.

    Returns the run's cancel flag; raises LeaseLost (the caller rolls back) when the lease
    is not ours any more. In PostgreSQL the UPDATE also locks the row until commit.
    """
    result = session.execute(
        sa.update(job)
        .where(job.id == run_id, job.lease_token == token)
        .values(
            heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            **progress,
        ),
        execution_options=NO_SYNC,
    )
    if result.rowcount != 1:
        raise LeaseLost(run_id)
    return bool(session.scalar(sa.select(job.cancel_requested).where(job.id == run_id)))


def forget_after(session: Session, run_id: str, phase: str, epoch: int) -> None:
    """Delete the epoch and statistics rows past the position (phase, epoch) of the
    checkpoint the run resumes from, in run order: every pretraining epoch comes before
    training epoch 1, so ("pretrain", p) keeps pretraining epochs 1..p only, and ("train", e)
    every pretraining epoch and training epochs 1..e. What a dead worker flushed after its
    last checkpoint goes; the resumed run writes it again, each row exactly once.
    ("pretrain", 0): no checkpoint, nothing kept. When rows went, (phase, epoch) is appended
    to the run's `rewinds`, so that event streams that sent them can say so. Call it fenced,
    right after the claim (the claim's UPDATE locks the row the append reads)."""
    kept = {"pretrain": epoch, "train": 0} if phase == "pretrain" else {"train": epoch}
    deleted = 0
    for table in (Epoch, EpochStats):
        deleted += session.execute(
            sa.delete(table).where(of_run(table, run_id), sa.or_(*(
                sa.and_(table.phase == p, table.epoch > e) for p, e in kept.items()))),
            execution_options=NO_SYNC,
        ).rowcount
    values: dict[str, object] = {"epochs_completed": epoch if phase == "train" else 0}
    if deleted:
        before = session.scalar(sa.select(Run.rewinds).where(Run.id == run_id)) or []
        values["rewinds"] = [*before, [phase, epoch]]
    session.execute(sa.update(Run).where(Run.id == run_id).values(**values),
                    execution_options=NO_SYNC)


def release(session: Session, run_id: str, token: str, *, now: datetime, job: Job = Run,
            **values: object) -> None:
    """Finish the run: set `values` (status, error, metrics...) and clear the lease. Fenced."""
    result = session.execute(
        sa.update(job)
        .where(job.id == run_id, job.lease_token == token)
        .values(finished_at=now, lease_token=None, lease_expires_at=None, **values),
        execution_options=NO_SYNC,
    )
    if result.rowcount != 1:
        raise LeaseLost(run_id)
    emit_status(session, session.get(job, run_id, populate_existing=True))


def hand_back(session: Session, run_id: str, token: str, job: Job = Run) -> None:
    """Put a running run back in the queue (its worker is shutting down): queued, the lease
    cleared, and this claim not counted in `attempts` (a hand-back is not a death, so it
    never brings the run closer to "worker_lost"). Fenced; call it after `fence`, which
    locks the row, so a cancel cannot slip in between (it is read by the fence)."""
    result = session.execute(
        sa.update(job)
        .where(job.id == run_id, job.lease_token == token, job.status == "running")
        .values(status="queued", lease_token=None, lease_expires_at=None,
                attempts=job.attempts - 1, published_at=None),
        execution_options=NO_SYNC,
    )
    if result.rowcount != 1:
        raise LeaseLost(run_id)


def settle_abandoned(session: Session, *, now: datetime, max_attempts: int,
                     run_id: str | None = None, job: Job = Run) -> int:
    """End abandoned runs that must not be trained again; how many.

    A cancelling run whose worker died ends cancelled; a run that has already been claimed
    `max_attempts` times fails with "worker_lost" (the reconciler then drops their
    checkpoints: worker/retention.py). `run_id` limits it to one run (a message for it
    arrived); None means every run (the reconciler).
    """
    expired = job.lease_expires_at < at(now)
    one = [job.id == run_id] if run_id is not None else []
    done = {"finished_at": now, "lease_token": None, "lease_expires_at": None}
    cancelled = session.scalars(
        sa.update(job)
        .where(job.status == "cancelling", expired, *one)
        .values(status="cancelled", **done)
        .returning(job.id),
        execution_options=NO_SYNC,
    ).all()
    lost = session.scalars(
        sa.update(job)
        .where(abandoned(now, job), job.attempts >= max_attempts, *one)
        .values(
            status="failed",
            error_code="worker_lost",
            error_message=f"the {'run' if job is Run else 'prediction'} was claimed "
            f"{max_attempts} times and every worker stopped before finishing it",
            **done,
        )
        .returning(job.id),
        execution_options=NO_SYNC,
    ).all()
    for settled in (*cancelled, *lost):
        emit_status(session, session.get(job, settled, populate_existing=True))
    return len(cancelled) + len(lost)
