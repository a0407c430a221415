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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import nn
from service.db import session_scope
from service.models import STAT_FIELDS, Artifact, Epoch, LayerStat, utcnow
from worker import lease

# How long to measure epochs before fixing the checkpoint interval (seconds).
CALIBRATE_SECONDS = 0.5
# The stop reason that ends the calibration segment (never stored).
CALIBRATED = "calibrated"


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

    def fence(self, session: Session, epochs_completed: int) -> None:
        self.cancel = lease.fence(
            session, self.run_id, self.token, now=utcnow(),
            lease_seconds=self.lease_seconds, epochs_completed=epochs_completed,
        )


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

    # -- writing -------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if monotonic() - self._last_flush >= self.lease.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """One fenced transaction: heartbeat, buffered rows, a due checkpoint, cancel flag."""
        with session_scope() as session:
            checkpoint = self.write(session)
        self._written(checkpoint)

    def write(self, session: Session) -> int:
        """The flush's statements, in the caller's transaction (the final one reuses it);
        the epoch of the checkpoint it stored, 0 for none. The buffer is kept until the
        transaction commits, so a failed one loses no row: the final transaction writes it."""
        self.lease.fence(session, self.epoch)
        write_epochs(session, self.lease.run_id, self.buffer)
        if self.state is not None and self.stored_epoch < self._state_epoch <= self.epoch:
            put_artifact(session, self.lease.run_id, "checkpoint", self._state_epoch,
                         self.state)
            return self._state_epoch
        return 0

    def _written(self, checkpoint: int) -> None:
        self.buffer = []
        self._last_flush = monotonic()
        if checkpoint:
            self.stored_epoch, self._last_stored = checkpoint, monotonic()


def write_epochs(session: Session, run_id: str, reports: list[nn.EpochReport]) -> None:
    """Insert the epoch rows and their layer-stat rows (bulk; the primary keys forbid
    a second copy of any row)."""
    if not reports:
        return
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
