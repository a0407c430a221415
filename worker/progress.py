"""What a training run writes while it trains: the engine's callbacks, with the rows buffered
and written in one fenced transaction at most every flush_seconds, because epochs can take
microseconds (the measurements and the rules behind it: bench/README.md, "The worker's writes").
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic

import sqlalchemy as sa
from sqlalchemy.orm import Session

import nn
from service import statstore, sweeps, usage
from service.db import connection_lost, session_scope
from service.models import Artifact, Epoch, EpochStats, utcnow
from service.serialize import finite
from worker import lease, shutdown

log = logging.getLogger(__name__)

# How long to measure epochs before fixing the checkpoint interval: at most this many seconds,
# or this many epochs.
CALIBRATE_SECONDS = 0.5
CALIBRATE_EPOCHS = 32
# The stop reason that ends the calibration segment (never stored).
CALIBRATED = "calibrated"
# The stop reason of a worker shutting down: the run goes back to the queue (never stored).
SHUTDOWN = "shutdown"

# Where a run is: ("pretrain", p) after pretraining epoch p, ("train", e) after training
# epoch e. The phases' names sort in the order they run, so tuples compare as the run goes.
Position = tuple[str, int]
START: Position = ("pretrain", 0)  # nothing done yet (with or without pretraining)


@dataclass
class Progress:
    """The engine's callbacks for one run: on_epoch, should_stop, on_checkpoint, on_stats."""

    lease: lease.Held
    epoch: int  # the last completed training epoch (the resume point at the start)
    pretrained: int = 0  # the last completed pretraining epoch (likewise)
    thinned_after: int | None = None  # the run's statistics thinning (service/statstore.py)
    epoch_rows: int = 0  # the run's epoch rows in the database, as of the last flush
    buffer: list[nn.EpochReport] = field(default_factory=list)
    # Statistics of epochs whose rows were flushed without them (nn.train's on_stats).
    late: list[nn.EpochReport] = field(default_factory=list)
    # Calibration: the checkpoint interval in epochs (None while measuring).
    every: int | None = None
    state: bytes | None = None  # the newest checkpoint from the engine, stored or not
    _state_at: Position = START
    stored: Position = START  # where the checkpoint in the database was taken
    _measured: list[float] = field(default_factory=list)  # epoch durations while calibrating
    _started: float = field(default_factory=monotonic)
    _last_flush: float = field(default_factory=monotonic)
    _last_stored: float = field(default_factory=monotonic)
    _at_boundary: bool = False
    _retry: bool = False  # the last flush failed: its rows may be in the database already
    _shutdown_by: float | None = None  # monotonic() time by which a shutdown stops at once
    # A sweep's child with early stopping: its rung decisions, made in the flush that writes
    # the rung's epoch row (service/sweeps.py says why there).
    asha: sweeps.Asha | None = None
    _stop_early: bool = False  # ASHA's stop, written in the flush being committed

    @property
    def position(self) -> Position:
        """Where the run is: the last completed epoch of either phase."""
        return ("train", self.epoch) if self.epoch else ("pretrain", self.pretrained)

    @property
    def stored_epoch(self) -> int:
        """The training epoch of the stored checkpoint (0 for none or a pretraining one)."""
        return self.stored[1] if self.stored[0] == "train" else 0

    # -- the engine's callbacks -------------------------------------------------------
    def on_epoch(self, report: nn.EpochReport) -> None:
        self.buffer.append(report)
        if report.phase == "train":
            self.epoch = report.epoch
        else:
            self.pretrained = report.epoch
        if self.every is None:
            self._measured.append(report.duration_s)
        self._at_boundary = True
        if self.asha is not None and report.phase == "train" and self.asha.due(report.epoch):
            self.flush()  # at the rung itself: its decision is not left to the next flush
        else:
            self._maybe_flush()

    def stats_epochs(self) -> Callable[[int], bool] | None:
        """Which epochs the engine computes statistics of: those the thinning rule keeps
        (each phase's latest comes with on_stats)."""
        if self.thinned_after is None:
            return None
        return functools.partial(statstore.kept, thinned_after=self.thinned_after)

    def on_stats(self, report: nn.EpochReport) -> None:
        # A phase stopped after an epoch reported without statistics: they come now.
        for i, buffered in enumerate(self.buffer):
            if (buffered.phase, buffered.epoch) == (report.phase, report.epoch):
                self.buffer[i] = report
                return
        self.late.append(report)

    def on_checkpoint(self, epoch: int, state: bytes) -> None:
        # epoch 0: taken within pretraining, right after the report of its latest epoch.
        self.state = state
        self._state_at = ("train", epoch) if epoch else ("pretrain", self.pretrained)
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
        """At an epoch boundary while measuring: fix N, and stop to restart with it if > 1.
        Each measured epoch is checkpointed (N = 1), which costs more than a tiny epoch: hence
        at most CALIBRATE_EPOCHS of them."""
        measured = self._measured
        if not measured or (len(measured) < CALIBRATE_EPOCHS
                            and monotonic() - self._started < CALIBRATE_SECONDS):
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
        return self._state_at == self.position or monotonic() > self._shutdown_by

    # -- writing -------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if monotonic() - self._last_flush >= self.lease.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """One fenced transaction: heartbeat, buffered rows, a due checkpoint, cancel flag.
        A connection error keeps everything for the next flush (bench/README.md, "The
        worker's writes")."""
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
        self._stop_early = False  # decided again by the next flush, from what committed
        self._last_flush = monotonic()
        self.lease.unreachable(exc)

    def write(self, session: Session, *, final: bool = False) -> Position | None:
        """The flush's statements, in the caller's transaction (the final one reuses it,
        `final`: no rung is decided for a run that has ended anyway); the position of the
        checkpoint it stored, or None. The buffer is kept until the transaction commits, so
        a failed one loses no row: the next one writes it."""
        self.lease.fence(session, self.epoch)
        write_epochs(session, self.lease.run_seq, self.buffer, replace=self._retry,
                     thinned_after=self.thinned_after, late=self.late)
        usage.record_rows(session, self.lease.run_id, self.epoch_rows + len(self.buffer))
        if self.asha is not None and not final and not self.lease.cancel:
            why = self.asha.decide(session, self.epoch)
            if why is not None:
                log.info("run %s: %s", self.lease.run_id, why)
                # acted on once committed (`written`): a transaction that fails leaves no
                # decision, and the next flush decides the rung again
                self._stop_early = True
        if self.state is not None and self.stored < self._state_at <= self.position:
            phase, epoch = self._state_at
            put_artifact(session, self.lease.run_id, "checkpoint", epoch, self.state,
                         phase=phase)
            return self._state_at
        return None

    def written(self, checkpoint: Position | None) -> None:
        if self.asha is not None:
            self.asha.decided = self.epoch  # the rungs through it are committed
            if self._stop_early:
                self.lease.cancel = True  # should_stop answers "cancelled" from now on
        self.epoch_rows += len(self.buffer)
        self.buffer, self.late = [], []
        self._retry = False
        self._last_flush = monotonic()
        if checkpoint:
            self.stored, self._last_stored = checkpoint, monotonic()


# The columns write_epochs fills, in the order of its row tuples.
EPOCH_COLUMNS = ("run_seq", "phase", "epoch", "layer", "train_loss", "val_loss",
                 "train_accuracy", "val_accuracy", "learning_rate", "duration_s",
                 "train_exact_match", "val_exact_match")
STAT_COLUMNS = ("run_seq", "phase", "epoch", "layout", "figures")


def write_epochs(session: Session, run_seq: int, reports: list[nn.EpochReport], *,
                 replace: bool = False, thinned_after: int | None = None,
                 late: list[nn.EpochReport] = ()) -> None:
    """Insert the epoch rows of the run numbered `run_seq` (Run.seq), and the statistics rows
    of the epochs the thinning rule keeps
    (`thinned_after`: service/statstore.py) and of each phase's latest epoch, whose previous
    latest goes unless the rule keeps it (bulk; the primary keys forbid a second copy of any
    row). `late`: reports whose epoch rows an earlier flush wrote, whose statistics came
    after (Progress.on_stats). `replace` first deletes any stored copy of these rows: after a
    COMMIT that failed on its connection, which may have gone through.

    The previous latest lies between the phase's first epoch with statistics here and the
    last kept epoch before it: flushes are contiguous, and a resumed run starts right after
    its checkpoint, whose epoch's rows were written with it (the rows past it were deleted
    at the claim); the rows between are thinned away, so only that latest can be there.

    On PostgreSQL the rows go in by COPY (bench/README.md, "The worker's writes"), elsewhere
    by an executemany INSERT; the same tuples either way."""
    if not reports and not late:
        return
    if replace:
        for rows, tables in ((reports, (Epoch, EpochStats)), (late, (EpochStats,))):
            for phase in {r.phase for r in rows}:
                numbers = [r.epoch for r in rows if r.phase == phase]
                for table in tables:
                    session.execute(sa.delete(table).where(
                        table.run_seq == run_seq, table.phase == phase,
                        table.epoch.between(min(numbers), max(numbers))),
                        execution_options=lease.NO_SYNC)
    first: dict[str, int] = {}
    latest: dict[str, int] = {}
    for r in (*late, *reports):
        if r.layer_stats:
            first[r.phase] = min(first.get(r.phase, r.epoch), r.epoch)
            latest[r.phase] = max(latest.get(r.phase, r.epoch), r.epoch)
    for phase, epoch in first.items():
        below = statstore.kept_before(epoch, thinned_after)
        if below < epoch - 1:
            session.execute(sa.delete(EpochStats).where(
                EpochStats.run_seq == run_seq, EpochStats.phase == phase,
                EpochStats.epoch.between(below + 1, epoch - 1)),
                execution_options=lease.NO_SYNC)
    # Numbers go as they are: a float column may hold NaN or an infinity (SQLite keeps NaN as
    # NULL; the API answers null for both).
    epochs = [
        (run_seq, r.phase, r.epoch, r.layer, r.train_loss, r.val_loss, r.train_accuracy,
         r.val_accuracy, r.learning_rate, r.duration_s, r.train_exact_match, r.val_exact_match)
        for r in reports
    ]
    stats = [
        (run_seq, r.phase, r.epoch, *statstore.pack(r.layer_stats))
        for r in (*late, *reports) if r.layer_stats and (
            statstore.kept(r.epoch, thinned_after) or r.epoch == latest[r.phase])
    ]
    insert = _copy if session.get_bind().dialect.name == "postgresql" else _insert
    for table, columns, rows in ((Epoch, EPOCH_COLUMNS, epochs),
                                 (EpochStats, STAT_COLUMNS, stats)):
        if rows:
            insert(session, table.__table__, columns, rows)


def _insert(session: Session, table: sa.Table, columns: tuple[str, ...],
            rows: list[tuple]) -> None:
    session.execute(sa.insert(table), [dict(zip(columns, finite(row))) for row in rows])


# COPY's binary format needs each column's PostgreSQL type (to pick psycopg's dumper).
COPY_TYPES = ((sa.LargeBinary, "bytea"), (sa.SmallInteger, "int2"), (sa.Integer, "int4"),
              (sa.Float, "float8"), (sa.String, "text"))


def _copy_type(column: sa.Column) -> str:
    stored = column.type.impl_instance if isinstance(column.type, sa.TypeDecorator) \
        else column.type
    for kind, name in COPY_TYPES:
        if isinstance(stored, kind):
            return name
    raise TypeError(f"no COPY type for {column} ({column.type})")


def _copy_values(table: sa.Table, columns: tuple[str, ...], dialect: sa.Dialect
                 ) -> Callable[[tuple], tuple]:
    """A row's values as COPY sends them: converted by their column's type where it is a
    TypeDecorator (a Phase's name to its number), as a statement's parameters are."""
    convert = [table.c[c].type.process_bind_param
               if isinstance(table.c[c].type, sa.TypeDecorator) else None for c in columns]
    return lambda row: tuple(v if f is None else f(v, dialect) for f, v in zip(convert, row))


def _copy(session: Session, table: sa.Table, columns: tuple[str, ...],
          rows: list[tuple]) -> None:
    """COPY ... FROM STDIN (FORMAT BINARY) on the session's connection, in its transaction.
    Its errors are wrapped as SQLAlchemy wraps those of a statement (a lost connection is an
    OperationalError, a duplicate key an IntegrityError), so the callers treat both alike."""
    connection = session.connection()
    dialect, raw = connection.dialect, connection.connection.driver_connection
    types = [_copy_type(table.c[c]) for c in columns]
    values = _copy_values(table, columns, dialect)
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    try:
        with raw.cursor() as cursor:
            with cursor.copy(sql) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(values(row))
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, raw, None)
        if lost:
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error,
                                         connection_invalidated=lost) from exc


def put_artifact(session: Session, run_id: str, kind: str, epoch: int, data: bytes, *,
                 phase: str = "train") -> None:
    """Replace the run's artifact of this kind (portable upsert; the run row is locked)."""
    session.execute(
        sa.delete(Artifact).where(Artifact.run_id == run_id, Artifact.kind == kind),
        execution_options=lease.NO_SYNC,
    )
    session.add(Artifact(run_id=run_id, kind=kind, phase=phase, epoch=epoch, data=data,
                         created_at=utcnow()))


def deadline(started_at: datetime, limit_seconds: float) -> float:
    """The monotonic() time at which a run that started at `started_at` times out."""
    return monotonic() + (started_at - utcnow()).total_seconds() + limit_seconds
