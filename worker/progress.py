"""What a training run writes while it trains: the engine's callbacks, batched.

Epochs can take microseconds, so rows are buffered and written by a flush at most every
FLUSH_SECONDS: one short transaction that renews the lease (fenced by its token), inserts the
buffered epoch and layer-stat rows, stores a due checkpoint and reads the cancel flag back.
`should_stop` answers from what the last flush saw and flushes when one is due, so a long
epoch still renews the lease (the engine asks about every 0.25 s within an epoch).

Checkpoints: the engine can only checkpoint every N epochs, N fixed per call, and
serialising the state costs about as much as a tiny epoch. So training starts with N = 1
while it measures the epochs ("calibrating", at most CALIBRATE_SECONDS), then, when N should
be larger, stops at an epoch boundary and resumes from the in-memory state with
N = ceil(CHECKPOINT_SECONDS / epoch duration): bit-identical, the engine guarantees it.
A checkpoint is stored at most every CHECKPOINT_SECONDS / 2, and only once the epoch rows up
to it are written with it, so resuming from it never leaves a hole in the rows.

The database may go away (a restart, a failover, a killed connection). A flush that fails
with a connection error keeps its rows and its checkpoint and is tried again FLUSH_SECONDS
later, with the rows re-inserted idempotently (the failed COMMIT may have gone through);
training goes on meanwhile. Only when no flush has renewed the lease for LEASE_SECONDS does
the worker give the run up (LeaseLost): by then another worker may own it, and the run is
resumed from its last stored checkpoint, by whoever claims it next.

Warm shutdown (worker/shutdown.py): `should_stop` answers SHUTDOWN at the first epoch boundary
whose checkpoint is in hand (about CHECKPOINT_SECONDS later at most), or at once when none
came within twice that (the run then resumes from its last stored checkpoint).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import nn
from service.db import connection_lost, session_scope
from service.models import STAT_FIELDS, Artifact, Epoch, LayerStat, utcnow
from worker import lease, shutdown

log = logging.getLogger(__name__)

# How long to measure epochs before fixing the checkpoint interval (seconds).
CALIBRATE_SECONDS = 0.5
# The stop reason that ends the calibration segment (never stored).
CALIBRATED = "calibrated"
# While writes keep failing, one warning per this many seconds.
WARN_EVERY_SECONDS = 5.0
# The stop reason of a worker shutting down: the run goes back to the queue (never stored).
SHUTDOWN = "shutdown"


@dataclass
class Lease:
    """The run a worker holds, and the settings its writes follow."""

    run_id: str
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
        self.cancel = lease.fence(
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
            raise lease.LeaseLost(self.run_id) from exc
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


@dataclass
class Progress:
    """The engine's callbacks for one run: on_epoch, should_stop, on_checkpoint."""

    lease: Lease
    epoch: int  # the last completed epoch (the resume point at the start)
    buffer: list[nn.EpochReport] = field(default_factory=list)
    # Calibration: the checkpoint interval in epochs (None while measuring).
    every: int | None = None
    state: bytes | None = None  # the newest checkpoint from the engine, stored or not
    _state_epoch: int = 0
    stored_epoch: int = 0  # the epoch of the checkpoint in the database
    _measured: list[float] = field(default_factory=list)  # epoch durations while calibrating
    _started: float = field(default_factory=monotonic)
    _last_flush: float = field(default_factory=monotonic)
    _last_stored: float = field(default_factory=monotonic)
    _at_boundary: bool = False
    _retry: bool = False  # the last flush failed: its rows may be in the database already
    _shutdown_by: float | None = None  # monotonic() time by which a shutdown stops at once

    # -- the engine's callbacks -------------------------------------------------------
    def on_epoch(self, report: nn.EpochReport) -> None:
        self.buffer.append(report)
        if report.phase == "train":
            self.epoch = report.epoch
            if self.every is None:
                self._measured.append(report.duration_s)
        self._at_boundary = True
        self._maybe_flush()

    def on_checkpoint(self, epoch: int, state: bytes) -> None:
        self.state, self._state_epoch = state, epoch
        if monotonic() - self._last_stored >= self.lease.checkpoint_seconds / 2:
            self.flush()

    def should_stop(self) -> str | None:
        self._maybe_flush()
        if self.lease.cancel:
            return "cancelled"
        if monotonic() > self.lease.deadline:
            return "timeout"
        if shutdown.requested.is_set() and self._may_stop_for_shutdown():
            return SHUTDOWN
        boundary, self._at_boundary = self._at_boundary, False
        if boundary and self.every is None:
            return self._calibrate()
        return None

    # -- calibration ---------------------------------------------------------------------
    def _calibrate(self) -> str | None:
        """At an epoch boundary while measuring: fix N, and stop to restart with it if > 1."""
        measured = self._measured
        if monotonic() - self._started < CALIBRATE_SECONDS or not measured:
            return None
        seconds = max(sum(measured) / len(measured), 1e-6)
        self.every = max(1, math.ceil(self.lease.checkpoint_seconds / seconds))
        return CALIBRATED if self.every > 1 else None

    def _may_stop_for_shutdown(self) -> bool:
        """Shutting down: stop where the newest checkpoint is the current epoch (so the run
        resumes exactly here), or at once when none came within 2 x CHECKPOINT_SECONDS
        (epochs vary; checkpoints come about every CHECKPOINT_SECONDS)."""
        if self._shutdown_by is None:
            self._shutdown_by = monotonic() + 2 * self.lease.checkpoint_seconds
            log.info("run %s: shutting down; stopping at the next checkpoint", self.lease.run_id)
        return self._state_epoch == self.epoch or monotonic() > self._shutdown_by

    # -- writing -------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if monotonic() - self._last_flush >= self.lease.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """One fenced transaction: heartbeat, buffered rows, a due checkpoint, cancel flag.
        A connection error keeps everything for the next flush (see the module docstring)."""
        started = monotonic()
        try:
            with session_scope() as session:
                checkpoint = self.write(session)
        except sa.exc.DBAPIError as exc:
            if not connection_lost(exc):
                raise
            self.failed(exc)
            return
        self.lease.reached(started)
        self.written(checkpoint)

    def failed(self, exc: BaseException) -> None:
        """A transaction of ours failed on its connection (and was rolled back, or not)."""
        self._retry = True
        self._last_flush = monotonic()
        self.lease.unreachable(exc)

    def write(self, session: Session) -> int:
        """The flush's statements, in the caller's transaction (the final one reuses it);
        the epoch of the checkpoint it stored, 0 for none. The buffer is kept until the
        transaction commits, so a failed one loses no row: the next one writes it."""
        self.lease.fence(session, self.epoch)
        write_epochs(session, self.lease.run_id, self.buffer, replace=self._retry)
        if self.state is not None and self.stored_epoch < self._state_epoch <= self.epoch:
            put_artifact(session, self.lease.run_id, "checkpoint", self._state_epoch,
                         self.state)
            return self._state_epoch
        return 0

    def written(self, checkpoint: int) -> None:
        self.buffer = []
        self._retry = False
        self._last_flush = monotonic()
        if checkpoint:
            self.stored_epoch, self._last_stored = checkpoint, monotonic()


def write_epochs(session: Session, run_id: str, reports: list[nn.EpochReport], *,
                 replace: bool = False) -> None:
    """Insert the epoch rows and their layer-stat rows (bulk; the primary keys forbid
    a second copy of any row). `replace` first deletes any stored copy of these rows: after
    a COMMIT that failed on its connection, which may have gone through."""
    if not reports:
        return
    if replace:
        for phase in {r.phase for r in reports}:
            numbers = [r.epoch for r in reports if r.phase == phase]
            for table in (Epoch, LayerStat):
                session.execute(sa.delete(table).where(
                    table.run_id == run_id, table.phase == phase,
                    table.epoch.between(min(numbers), max(numbers))),
                    execution_options=lease.NO_SYNC)
    session.execute(sa.insert(Epoch), [
        {"run_id": run_id, "phase": r.phase, "epoch": r.epoch,
         "train_loss": finite(r.train_loss), "val_loss": finite(r.val_loss),
         "train_accuracy": finite(r.train_accuracy), "val_accuracy": finite(r.val_accuracy),
         "learning_rate": finite(r.learning_rate), "duration_s": r.duration_s}
        for r in reports
    ])
    stats = [
        {"run_id": run_id, "phase": r.phase, "epoch": r.epoch, "layer": s["layer"],
         "name": s["name"], **{k: finite(s.get(k)) for k in STAT_FIELDS}}
        for r in reports for s in r.layer_stats
    ]
    if stats:
        session.execute(sa.insert(LayerStat), stats)


def put_artifact(session: Session, run_id: str, kind: str, epoch: int, data: bytes) -> None:
    """Replace the run's artifact of this kind (portable upsert; the run row is locked)."""
    session.execute(
        sa.delete(Artifact).where(Artifact.run_id == run_id, Artifact.kind == kind),
        execution_options=lease.NO_SYNC,
    )
    session.add(Artifact(run_id=run_id, kind=kind, epoch=epoch, data=data, created_at=utcnow()))


def finite(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become None (PostgreSQL's JSON rejects them and
    SQLite stores NaN as NULL anyway, so both backends answer the same)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def deadline(started_at: datetime, limit_seconds: float) -> float:
    """The monotonic() time at which a run that started at `started_at` times out."""
    return monotonic() + (started_at - utcnow()).total_seconds() + limit_seconds
