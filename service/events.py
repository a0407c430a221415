"""Live run events: what GET /v1/runs/{run_id}/events streams, and the per-process poller
that wakes the streams.

A stream sends (text/event-stream; openapi.yaml has the contract):

- `epoch`: every stored epoch row after the client's position, in run order (pretraining
  before training), serialised as GET .../epochs does; with include=layer_stats it also
  carries that epoch's layer-stats rows (an epoch may have none).
- `status`: the run's JSON whenever its status differs from the one the client last got. A
  status that is not terminal goes before the rows read after it; a terminal one after every
  row (the worker commits its last rows with it), and the stream ends there.
- `rewind`: where a resumed run went back to, when it discarded rows this client was sent
  (worker/lease.py `forget_after` appends the position to `Run.rewinds`).

Every event's `id` is the client's whole state, "{rewinds}.{phase}.{epoch}.{status}" (the
rewinds it knows of, the last row it got, the last status it got), so a client that resumes
with Last-Event-ID gets exactly what follows, with no gap and no repeat.

The database is the only source. One `Hub` per process polls the runs its streams watch,
every EVENTS_POLL_SECONDS in one query, and wakes the streams of a run that changed (the
worker renews `heartbeat_at` with every commit). A woken stream reads the rows after its
position; streams in the same place at the same change share that read and its encoding
(`Hub.batch_after`), so many streams on one training run cost one query per commit, and
each stream one write per commit however many epochs it brought. No stream holds a
database connection while it waits; under gunicorn's gevent worker (service/cli.py) each is
a greenlet, not one of a few threads.

Open streams are rows of `event_streams`, so TENANT_MAX_EVENT_STREAMS holds across processes
and machines; the hub renews its streams' rows, and rows nobody renews (their process died)
stop counting after STREAM_TTL_SECONDS and are deleted.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from time import monotonic
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from service import db, limits, statstore
from service.errors import ApiError, validation_error
from service.models import RUN_STATUSES, Epoch, EpochStats, EventStream, Run, of_run, utcnow
from service.pagination import evenly_spaced
from service.serialize import FINISHED_STATUSES, epoch_json, run_json

log = logging.getLogger(__name__)

Position = tuple[str, int]  # ("pretrain", p) or ("train", e): the phases sort in run order
START: Position = ("pretrain", 0)  # before every row
ROWS_PER_READ = 500
# An open stream's row is renewed this often, and stops counting this long after its
# process last renewed it (seconds).
RENEW_SECONDS = 20.0
STREAM_TTL_SECONDS = 60.0
# How long a client waits before reconnecting (the `retry` field, milliseconds).
RETRY_MS = 2000
SHARED_READS = 16  # reads kept for the streams that ask for the same one
RETRY_AFTER_SECONDS = 30  # of a 429 too_many_streams
_CURSOR = re.compile(r"(\d{1,9})\.(pretrain|train)\.(\d{1,9})\.([a-z]+|-)")


@dataclass(frozen=True)
class Cursor:
    """What a client has been sent: the event id."""

    rewinds: int  # of the run's rewinds, how many it knows of (or that predate it)
    position: Position  # the last row it got (START: none)
    status: str | None  # the last status it got

    def __str__(self) -> str:
        phase, epoch = self.position
        return f"{self.rewinds}.{phase}.{epoch}.{self.status or '-'}"

    @classmethod
    def parse(cls, text: str, path: str) -> Cursor:
        """An id this stream sent, or a 422 at `path`."""
        found = _CURSOR.fullmatch(text.strip())
        status = found and (None if found[4] == "-" else found[4])
        if not found or status not in (None, *RUN_STATUSES):
            raise validation_error(path, "is not an event id of this stream")
        return cls(int(found[1]), (found[2], int(found[3])), status)


@dataclass(frozen=True)
class Snapshot:
    """A run as one read saw it."""

    run: dict[str, Any]  # run_json
    rewinds: tuple[Position, ...]
    # The same for snapshots of the same state (_state) of the run, and only for them: a
    # read of rows made after one of them has every row any of them has (Hub.batch_after).
    version: int

    @classmethod
    def of(cls, run: Run, version: int) -> Snapshot:
        return cls(run_json(run), tuple((p, e) for p, e in run.rewinds or ()), version)

    @property
    def status(self) -> str:
        return self.run["status"]


def _state(run: Run) -> tuple[Any, ...]:
    """What changes when a worker commits or the status moves."""
    return (run.status, run.heartbeat_at, run.finished_at, run.cancel_requested,
            run.epochs_completed, len(run.rewinds or ()))


@dataclass(eq=False)
class Watcher:
    """One stream's link to the hub: the newest snapshot of its run, and a wake-up."""

    run_id: str
    stream_id: str
    snapshot: Snapshot | None  # None: the run is gone
    changed: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Batch:
    """Epoch events, encoded: `count` rows as one chunk of text, and the cursor after them."""

    text: str
    cursor: Cursor
    count: int


def batch(rows: list[tuple[Position, dict[str, Any]]], cursor: Cursor) -> Batch:
    chunks = []
    for position, row in rows:
        cursor = replace(cursor, position=position)
        chunks.append(sse("epoch", row, cursor))
    return Batch("".join(chunks), cursor, len(rows))


@dataclass(eq=False)
class _Shared:
    batch: Batch | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Hub:
    """This process's poller: one thread (a greenlet under gevent), alive while a stream is
    open, that reads the watched runs every EVENTS_POLL_SECONDS and wakes their streams."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.poll_seconds = float(app.config["EVENTS_POLL_SECONDS"])
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Watcher]] = {}
        self._states: dict[str, tuple[Any, ...]] = {}
        self._joins = 0  # watch() calls so far
        self._joined: dict[str, int] = {}  # run id -> the value of _joins at its last watch()
        self._version = 0  # versions given out, over every run
        self._known: dict[str, tuple[tuple[Any, ...], int]] = {}  # run id -> (state, version)
        self._reads: dict[tuple[Any, ...], _Shared] = {}
        self._thread: threading.Thread | None = None
        self._renewed = 0.0
        self.stopping = threading.Event()

    def watch(self, run_id: str, stream_id: str, first: Snapshot) -> Watcher:
        watcher = Watcher(run_id, stream_id, first)
        with self._lock:
            self._watchers.setdefault(run_id, set()).add(watcher)
            # The first poll that reads the run after this counts it as changed, so the new
            # stream gets a snapshot read after it joined (the hub may have seen a change
            # `first` missed, and a read begun before `first` may be older than it).
            self._states.pop(run_id, None)
            self._joins += 1
            self._joined[run_id] = self._joins
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="backprop-events",
                                                daemon=True)
                self._thread.start()
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            watchers = self._watchers.get(watcher.run_id, set())
            watchers.discard(watcher)
            if not watchers:
                self._watchers.pop(watcher.run_id, None)
                self._states.pop(watcher.run_id, None)
                self._joined.pop(watcher.run_id, None)
                self._known.pop(watcher.run_id, None)

    def snapshot(self, run: Run) -> Snapshot:
        """The run as just read (by a stream opening)."""
        with self._lock:
            return self._snapshot(run)

    def _snapshot(self, run: Run) -> Snapshot:
        state, known = _state(run), self._known.get(run.id)
        if known is None or known[0] != state:
            self._version += 1
            known = self._known[run.id] = (state, self._version)
        return Snapshot.of(run, known[1])

    def stop(self) -> None:
        """End every stream now (the process is shutting down; clients resume elsewhere)."""
        self.stopping.set()
        with self._lock:
            watchers = [w for ws in self._watchers.values() for w in ws]
        for watcher in watchers:
            watcher.changed.set()

    def _loop(self) -> None:
        while not self.stopping.wait(self.poll_seconds):
            with self._lock:
                if not self._watchers:
                    self._thread = None
                    return
            try:
                self.poll()
                if monotonic() - self._renewed >= RENEW_SECONDS:
                    self._renew()
                    self._renewed = monotonic()
            except Exception:  # noqa: BLE001 - the database may be away; streams keep waiting
                log.warning("event streams: polling the runs failed", exc_info=True)

    def poll(self) -> None:
        """Read every watched run once; wake the streams of those that changed."""
        with self._lock:
            ids, joins = list(self._watchers), self._joins
        if not ids:
            return
        with Session(db.engine(self.app)) as session:
            runs = {r.id: r for r in session.scalars(sa.select(Run).where(Run.id.in_(ids)))}
            changed: dict[str, Snapshot | None] = {}
            with self._lock:
                for run_id in ids:
                    if self._joined.get(run_id, 0) > joins:  # read before a stream joined
                        continue
                    run = runs.get(run_id)
                    state = None if run is None else _state(run)
                    if run_id in self._states and self._states[run_id] == state:
                        continue
                    self._states[run_id] = state
                    changed[run_id] = None if run is None else self._snapshot(run)
        for run_id, snapshot in changed.items():
            with self._lock:
                watchers = list(self._watchers.get(run_id, ()))
            for watcher in watchers:
                watcher.snapshot = snapshot
                watcher.changed.set()

    def _renew(self) -> None:
        """Renew this process's open streams; delete the rows of streams nobody renews."""
        with self._lock:
            ids = [w.stream_id for ws in self._watchers.values() for w in ws]
        now = utcnow()
        with db.session_scope(self.app) as session:
            if ids:
                session.execute(sa.update(EventStream).where(EventStream.id.in_(ids))
                                .values(seen_at=now), execution_options={"synchronize_session":
                                                                        False})
            session.execute(sa.delete(EventStream).where(
                EventStream.seen_at < now - timedelta(seconds=STREAM_TTL_SECONDS)))

    def batch_after(self, run_id: str, cursor: Cursor, stats: bool, version: int) -> Batch:
        """The rows after the cursor's position, read (read_rows) and encoded once for every
        stream that asks with the same cursor at the same version of the run."""
        key = (run_id, cursor, stats, version)
        with self._lock:
            shared = self._reads.get(key)
            mine = shared is None
            if mine:
                shared = self._reads[key] = _Shared()
                while len(self._reads) > SHARED_READS:
                    self._reads.pop(next(iter(self._reads)))
        assert shared is not None
        if mine:
            try:
                shared.batch = batch(read_rows(self.app, run_id, stats, after=cursor.position),
                                     cursor)
            except BaseException:
                with self._lock:
                    self._reads.pop(key, None)
                raise
            finally:
                shared.done.set()
        else:
            shared.done.wait()
        if shared.batch is None:  # the read failed in the stream that made it: read here
            return batch(read_rows(self.app, run_id, stats, after=cursor.position), cursor)
        return shared.batch


def init_app(app: Flask) -> None:
    app.extensions["events"] = Hub(app)


def hub(app: Flask) -> Hub:
    return app.extensions["events"]


# ---- reading ------------------------------------------------------------------------------

def _after(entity: type[Epoch] | type[EpochStats], position: Position) -> sa.ColumnElement[bool]:
    phase, epoch = position
    return sa.or_(entity.phase > phase, sa.and_(entity.phase == phase, entity.epoch > epoch))


def _among(entity: type[Epoch] | type[EpochStats], positions: list[Position]
           ) -> sa.ColumnElement[bool]:
    by_phase: dict[str, list[int]] = {}
    for phase, epoch in positions:
        by_phase.setdefault(phase, []).append(epoch)
    return sa.or_(*(sa.and_(entity.phase == p, entity.epoch.in_(e)) for p, e in by_phase.items()))


def read_rows(app: Flask, run_id: str, stats: bool, *, after: Position | None = None,
              among: list[Position] | None = None) -> list[tuple[Position, dict[str, Any]]]:
    """Up to ROWS_PER_READ epoch rows of the run, in run order, with their positions: those
    after `after`, or those at the positions `among`; with `stats`, each carries its
    epoch's layer-stats rows as `layer_stats`."""
    where = _after(Epoch, after) if after is not None else _among(Epoch, among or [])
    with Session(db.engine(app)) as session:
        # Plain rows (epoch_json reads their attributes as an Epoch's): a third of the ORM's
        # cost, for the rows every stream of a training run is sent.
        epochs = session.execute(
            sa.select(*Epoch.__table__.columns).where(of_run(Epoch, run_id), where)
            .order_by(Epoch.phase, Epoch.epoch).limit(ROWS_PER_READ)).all()
        rows = [((e.phase, e.epoch), epoch_json(e)) for e in epochs]
        if stats and rows:
            positions = [p for p, _ in rows]
            found: dict[Position, list[dict[str, Any]]] = {}
            for s in session.scalars(
                    sa.select(EpochStats).where(of_run(EpochStats, run_id),
                                                _among(EpochStats, positions))):
                found[(s.phase, s.epoch)] = statstore.rows(s)
            for position, row in rows:
                row["layer_stats"] = found.get(position, [])
    return rows


def picked_positions(app: Flask, run_id: str, max_points: int) -> list[Position]:
    """Of the run's stored rows, at most max_points per phase, evenly spaced (evenly_spaced),
    in run order. A phase's epochs are 1..M, each once (worker/lease.py), so they are picked
    from their count without reading them, unless they are not (then they are read)."""
    with Session(db.engine(app)) as session:
        phases = session.execute(
            sa.select(Epoch.phase, sa.func.count(), sa.func.max(Epoch.epoch))
            .where(of_run(Epoch, run_id)).group_by(Epoch.phase).order_by(Epoch.phase)).all()
        picked: list[Position] = []
        for phase, count, last in phases:
            epochs: Any = range(1, last + 1)
            if count != last:
                epochs = session.scalars(sa.select(Epoch.epoch).where(
                    of_run(Epoch, run_id), Epoch.phase == phase).order_by(Epoch.epoch)).all()
            picked += [(phase, e) for e in evenly_spaced(epochs, max_points)]
    return picked


# ---- open streams ---------------------------------------------------------------------------

def open_stream(session: Session, tenant_id: str, config: dict[str, Any]) -> str:
    """Count a new stream for the tenant and commit it: its id, or a 429 too_many_streams
    when TENANT_MAX_EVENT_STREAMS are open (counting the new one)."""
    row = EventStream(tenant_id=tenant_id, seen_at=utcnow())
    session.add(row)
    session.flush()
    limits.lock_tenant(session, tenant_id)
    live = EventStream.seen_at > utcnow() - timedelta(seconds=STREAM_TTL_SECONDS)
    open_ = session.scalar(sa.select(sa.func.count()).select_from(EventStream)
                           .where(EventStream.tenant_id == tenant_id, live))
    limit = int(config["TENANT_MAX_EVENT_STREAMS"])
    if open_ > limit:
        session.rollback()
        raise ApiError(429, "too_many_streams",
                       f"this tenant already has {open_ - 1} event streams open; the limit is "
                       f"{limit}: close one", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                       limit=limit)
    session.commit()
    return row.id


def close_stream(app: Flask, stream_id: str) -> None:
    try:
        with db.session_scope(app) as session:
            session.execute(sa.delete(EventStream).where(EventStream.id == stream_id))
    except sa.exc.DBAPIError:  # the row stops counting after STREAM_TTL_SECONDS anyway
        log.warning("event streams: could not delete stream %s", stream_id, exc_info=True)


# ---- the stream -----------------------------------------------------------------------------

def sse(event: str, data: Any, ident: Cursor) -> str:
    return (f"id: {ident}\nevent: {event}\n"
            f"data: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n")


@dataclass
class Stream:
    """One client's stream: its cursor moves with every event it is sent."""

    app: Flask
    run_id: str
    stream_id: str
    cursor: Cursor
    stats: bool  # include=layer_stats
    max_points: int | None  # downsample the rows stored when it opened (a fresh stream only)

    def events(self, first: Snapshot) -> Iterator[str]:
        """The whole stream; ends after a terminal status, when the run is deleted or when
        the process shuts down."""
        hub_ = hub(self.app)
        watcher = hub_.watch(self.run_id, self.stream_id, first)
        keepalive = float(self.app.config["EVENTS_KEEPALIVE_SECONDS"])
        try:
            yield f"retry: {RETRY_MS}\n\n"
            snapshot: Snapshot | None = first
            downsample = self.max_points is not None
            while snapshot is not None and not hub_.stopping.is_set():
                yield from self._catch_up(snapshot, downsample)
                downsample = False
                if self.cursor.status in FINISHED_STATUSES:
                    return
                if not watcher.changed.wait(keepalive):
                    yield ": keep-alive\n\n"
                    continue
                watcher.changed.clear()
                snapshot = watcher.snapshot
        finally:
            hub_.unwatch(watcher)
            close_stream(self.app, self.stream_id)

    def _catch_up(self, snapshot: Snapshot, downsample: bool = False) -> Iterator[str]:
        """Everything the snapshot (and the rows read after it) has that the client has not."""
        new = snapshot.rewinds[self.cursor.rewinds:]
        if new:
            kept = min(self.cursor.position, *new)
            moved = kept < self.cursor.position
            self.cursor = replace(self.cursor, rewinds=len(snapshot.rewinds), position=kept)
            if moved:
                yield sse("rewind", {"phase": kept[0], "epoch": kept[1]}, self.cursor)
        finished = snapshot.status in FINISHED_STATUSES
        news = snapshot.status != self.cursor.status
        if news and not finished:
            yield from self._status(snapshot)
        if downsample:
            yield from self._downsampled()
        while True:
            sent = yield from self._send(hub(self.app).batch_after(
                self.run_id, self.cursor, self.stats, snapshot.version))
            if sent < ROWS_PER_READ:
                break
        if news and finished:
            yield from self._status(snapshot)

    def _downsampled(self) -> Iterator[str]:
        """A fresh stream with max_points: of the rows stored now, evenly spaced ones per
        phase (the first and last kept, as GET .../epochs?max_points picks them)."""
        picked = picked_positions(self.app, self.run_id, self.max_points or 2)
        for start in range(0, len(picked), ROWS_PER_READ):
            yield from self._send(batch(read_rows(self.app, self.run_id, self.stats,
                                                  among=picked[start:start + ROWS_PER_READ]),
                                        self.cursor))
        if picked:  # the rows left out are skipped, not sent later (the last one is picked)
            self.cursor = replace(self.cursor, position=max(self.cursor.position, picked[-1]))

    def _send(self, sent: Batch) -> Generator[str, None, int]:
        """Its rows, in one write; how many."""
        if sent.count:
            self.cursor = sent.cursor
            yield sent.text
        return sent.count

    def _status(self, snapshot: Snapshot) -> Iterator[str]:
        self.cursor = replace(self.cursor, status=snapshot.status)
        yield sse("status", snapshot.run, self.cursor)
