"""What a training run writes while it trains: the engine's callbacks, batched.

Epochs can take microseconds, so rows are buffered and written by a flush at most every
FLUSH_SECONDS: one short transaction that renews the lease (fenced by its token), inserts the
buffered epoch and statistics rows, records what the run's rows count toward its tenant's
stored bytes (service/usage.py), stores a due checkpoint and reads the cancel flag back.
`should_stop` answers from what the last flush saw and flushes when one is due, so a long
epoch still renews the lease (the engine asks about every 0.25 s within an epoch).

How the rows are written, measured (bench/service.py; py-spy on the Celery child): a tiny
epoch (xor-online, 2 ms) brings 3 rows (1 epoch, 2 layer-stat). Written with the ORM's bulk
INSERT (psycopg's pipelined executemany) they cost about 0.3 ms per epoch, 13-15% of the
run: SQLAlchemy's parameter processing and PostgreSQL executing one INSERT per row. So
write_epochs builds plain tuples once and, on PostgreSQL, sends them with COPY ... FROM STDIN
in binary format, in the same fenced transaction (SQLite keeps an executemany INSERT of the
same tuples). What PostgreSQL does per row was then most of the rest (inserting it, and
checking its foreign key): as a row per weight array (4 more rows per epoch here), a flush
of 460 such epochs cost about 120 us per epoch; with the arrays as JSON in their layer's row
about 80, a third of it encoding the JSON. Now an epoch's statistics are one packed row
(service/statstore.py), written only for the epochs the run's thinning rule keeps (and the
latest), so most epochs bring a single row. Numbers are written as they are: float columns
may hold NaN or infinities (the API answers null for them).

The flush stays synchronous, in the training thread: a background writer could hide only
PostgreSQL's share (and on these 2 cores PostgreSQL working beside the training slows it
down anyway, while the writer's Python work would share the GIL), and it would make every
guarantee here (rows before their checkpoint, the retry after a lost connection, the lease
given up in time, cancel, shutdown) depend on two threads' timing, against the tests that
check them one epoch at a time.

Checkpoints: the engine can only checkpoint every N epochs, N fixed per call, and
serialising the state costs about as much as a tiny epoch. So training starts with N = 1
while it measures the epochs ("calibrating", at most CALIBRATE_SECONDS), then, when N should
be larger, stops at an epoch boundary and resumes from the in-memory state with
N = ceil(CHECKPOINT_SECONDS / epoch duration): bit-identical, the engine guarantees it.
A checkpoint is stored at most every CHECKPOINT_SECONDS / 2, and only once the epoch rows up
to it are written with it, so resuming from it never leaves a hole in the rows.

Pretraining (training.pretrain) is checkpointed like training: the engine reports a
checkpoint within pretraining as on_checkpoint(0, state), right after the report of
pretraining epoch p, and it is stored at position ("pretrain", p) (Artifact.phase and
epoch), so a run whose worker dies while fine-tuning does not pretrain again, and one that
dies while pretraining goes on from its last pretraining checkpoint. Positions order as the
run goes: ("pretrain", p) < ("train", e) for every p and e >= 1. Calibration measures
pretraining and training epochs alike (so a long pretraining does not serialise a
checkpoint after each of its epochs); the one interval then serves both phases, whose
epochs differ in cost by a small factor (a pretraining epoch is one layer's autoencoder).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic

import sqlalchemy as sa
from sqlalchemy.orm import Session

import nn
from service import statstore, usage
from service.db import connection_lost, session_scope
from service.models import Artifact, Epoch, EpochStats, utcnow
from service.serialize import finite
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

# Where a run is: ("pretrain", p) after pretraining epoch p, ("train", e) after training
# epoch e. The phases' names sort in the order they run, so tuples compare as the run goes.
Position = tuple[str, int]
START: Position = ("pretrain", 0)  # nothing done yet (with or without pretraining)


@dataclass
class Lease:
    """The run a worker holds, and the settings its writes follow."""

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
    epoch: int  # the last completed training epoch (the resume point at the start)
    pretrained: int = 0  # the last completed pretraining epoch (likewise)
    thinned_after: int | None = None  # the run's statistics thinning (service/statstore.py)
    epoch_rows: int = 0  # the run's epoch rows in the database, as of the last flush
    buffer: list[nn.EpochReport] = field(default_factory=list)
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
        self._maybe_flush()

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
        return self._state_at == self.position or monotonic() > self._shutdown_by

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

    def write(self, session: Session) -> Position | None:
        """The flush's statements, in the caller's transaction (the final one reuses it);
        the position of the checkpoint it stored, or None. The buffer is kept until the
        transaction commits, so a failed one loses no row: the next one writes it."""
        self.lease.fence(session, self.epoch)
        write_epochs(session, self.lease.run_seq, self.buffer, replace=self._retry,
                     thinned_after=self.thinned_after)
        usage.record_rows(session, self.lease.run_id, self.epoch_rows + len(self.buffer))
        if self.state is not None and self.stored < self._state_at <= self.position:
            phase, epoch = self._state_at
            put_artifact(session, self.lease.run_id, "checkpoint", epoch, self.state,
                         phase=phase)
            return self._state_at
        return None

    def written(self, checkpoint: Position | None) -> None:
        self.epoch_rows += len(self.buffer)
        self.buffer = []
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
                 replace: bool = False, thinned_after: int | None = None) -> None:
    """Insert the epoch rows of the run numbered `run_seq` (Run.seq), and the statistics rows
    of the epochs the thinning rule keeps
    (`thinned_after`: service/statstore.py) and of each phase's latest epoch, whose previous
    latest goes unless the rule keeps it (bulk; the primary keys forbid a second copy of any
    row). `replace` first deletes any stored copy of these rows: after a COMMIT that failed
    on its connection, which may have gone through.

    The previous latest is epoch first - 1 of the phase's first epoch here: flushes are
    contiguous, and a resumed run starts right after its checkpoint, whose epoch's rows were
    written with it (the rows past it were deleted at the claim).

    On PostgreSQL the rows go in by COPY (see the module docstring), elsewhere by an
    executemany INSERT; the same tuples either way."""
    if not reports:
        return
    if replace:
        for phase in {r.phase for r in reports}:
            numbers = [r.epoch for r in reports if r.phase == phase]
            for table in (Epoch, EpochStats):
                session.execute(sa.delete(table).where(
                    table.run_seq == run_seq, table.phase == phase,
                    table.epoch.between(min(numbers), max(numbers))),
                    execution_options=lease.NO_SYNC)
    first: dict[str, int] = {}
    latest: dict[str, int] = {}
    for r in reports:
        if r.layer_stats:
            first.setdefault(r.phase, r.epoch)
            latest[r.phase] = r.epoch
    for phase, epoch in first.items():
        if epoch > 1 and not statstore.kept(epoch - 1, thinned_after):
            session.execute(sa.delete(EpochStats).where(
                EpochStats.run_seq == run_seq, EpochStats.phase == phase,
                EpochStats.epoch == epoch - 1), execution_options=lease.NO_SYNC)
    # Numbers go as they are: a float column may hold NaN or an infinity (SQLite keeps NaN as
    # NULL; the API answers null for both).
    epochs = [
        (run_seq, r.phase, r.epoch, r.layer, r.train_loss, r.val_loss, r.train_accuracy,
         r.val_accuracy, r.learning_rate, r.duration_s, r.train_exact_match, r.val_exact_match)
        for r in reports
    ]
    stats = [
        (run_seq, r.phase, r.epoch, *statstore.pack(r.layer_stats))
        for r in reports if r.layer_stats and (
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
