"""The data model. The run row is the truth about a job; the broker only carries wake-ups.

Per-epoch rows and statistics rows (every layer's, packed, in one row per epoch) have natural
primary keys (run, phase, epoch), so a row can be written at most once whatever the worker
does. They are most of what a database holds (a run keeps every epoch's row: 100,000 for
the longest), so they are narrow: the run is named by its `seq` (4 bytes, where its id takes
37, once in the row and once in the key's index), the phase by a small integer (`Phase`),
and the key is the only index, the one every reader uses (bench/STORAGE.md).

Tenancy: every data set and run belongs to a tenant (`tenant_id`); epochs, statistics and
artifacts belong to a run and are reached only through it. API keys belong to a tenant and
are stored as the SHA-256 of the key, never the key itself.
"""

from __future__ import annotations

import uuid
from datetime import datetime, UTC
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    SmallInteger,
    Text,
    TypeDecorator,
    false,
    select,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

PHASES = ("pretrain", "train")  # in the order a run goes through them
# "pending": a sweep's child held back until the sweep may have another run going
# (service/sweeps.py); only pending -> queued (released) or -> cancelled leave it.
RUN_STATUSES = ("pending", "queued", "running", "cancelling", "succeeded", "failed",
                "cancelled")
ACTIVE_STATUSES = ("queued", "running", "cancelling")
ARTIFACT_KINDS = ("initial", "checkpoint", "final", "best")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Phase(TypeDecorator):
    """A phase ("pretrain" or "train") stored as its index in PHASES: 2 bytes, ordered as
    the names are (and as the run goes), so comparisons of (phase, epoch) keep their sense."""

    impl = SmallInteger
    cache_ok = True

    @property
    def python_type(self) -> type:
        return str

    def process_bind_param(self, value: str | None, dialect: Any) -> int | None:
        if value is None:
            return None
        if value not in PHASES:
            raise ValueError(f"not a phase: {value!r}")
        return PHASES.index(value)

    def process_result_value(self, value: int | None, dialect: Any) -> str | None:
        return None if value is None else PHASES[value]


class next_run_seq(FunctionElement):
    """The `seq` of a run being inserted: PostgreSQL's sequence `runs_seq`; on SQLite one
    more than the largest, read in the INSERT itself (a single writer at a time). A number
    SQLite gives again after the largest run is deleted names no row: that run's rows went
    with it (ON DELETE CASCADE)."""

    type = Integer()
    inherit_cache = True


@compiles(next_run_seq)
def _next_run_seq(element: next_run_seq, compiler: Any, **kw: Any) -> str:
    return "nextval('runs_seq')"


@compiles(next_run_seq, "sqlite")
def _next_run_seq_sqlite(element: next_run_seq, compiler: Any, **kw: Any) -> str:
    return "(SELECT coalesce(max(seq), 0) + 1 FROM runs)"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<Tenant {self.id} {self.name!r}>"


class ApiKey(Base):
    """A tenant's API key: only its SHA-256 is stored (the key is 256 random bits, so a fast
    hash is enough), and `prefix`, its first characters, to tell keys apart in a list."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(20))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        state = "revoked" if self.revoked_at else "active"
        return f"<ApiKey {self.id} {self.prefix}... tenant={self.tenant_id} {state}>"


class IdempotencyKey(Base):
    """The first answer to a POST sent with an Idempotency-Key, replayed to its retries.

    Inserted in the same transaction as what the request created, so of two concurrent
    requests with one key only one commits (the primary key), and the other replays it."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    headers: Mapped[dict] = mapped_column(JSON)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    def __repr__(self) -> str:
        return f"<IdempotencyKey {self.tenant_id} {self.key!r} {self.status}>"


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    n_samples: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list] = mapped_column(JSON)  # per-sample shape, e.g. [2]
    task: Mapped[str] = mapped_column(String(20))  # classification | regression | seq2seq
    classes: Mapped[list | None] = mapped_column(JSON)
    target_dim: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[dict] = mapped_column(JSON)  # how it was made: json, generator, csv, npz
    size_bytes: Mapped[int] = mapped_column(Integer)
    # npz bytes with "inputs" and "targets"; deferred so listing never loads it.
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))

    # A tenant's list, newest first (and every lookup by tenant).
    __table_args__ = (
        Index("ix_datasets_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )

    def __repr__(self) -> str:
        return f"<Dataset {self.id} {self.name!r} n={self.n_samples}>"


class Job:
    """What a worker's job (a run, a batch prediction) carries for its lifecycle: how it
    ended, the cooperative cancel, and the lease worker/lease.py claims and fences."""

    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The lease: a worker owns a running run while lease_expires_at is in the future; every
    # write it makes is fenced by lease_token, so a stale worker's writes change nothing.
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    # When the task message was last published (the reconciler republishes stale ones).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Sweep(Base):
    """A grid or random search (POST /v1/sweeps): its children are ordinary runs carrying
    `sweep_id`, made all at once and held `pending` until released (service/sweeps.py).

    Its status is derived from its children's rows whenever it is read; `finished_at` and
    `outcome` are set once, by whoever settles it first (a compare-and-set), which is what
    makes its sweep.* webhook event exactly-once."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dataset_id: Mapped[str] = mapped_column(String(36))
    spec: Mapped[dict] = mapped_column(JSON)  # the base run: network, training
    parameters: Mapped[dict] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(20))  # grid | random
    max_concurrent: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(40))
    goal: Mapped[str] = mapped_column(String(20))  # minimize | maximize
    early_stopping: Mapped[dict | None] = mapped_column(JSON)
    runs_total: Mapped[int] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(20))  # its status when settled

    __table_args__ = (
        Index("ix_sweeps_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        # The sweeps not settled yet (the reconciler's pass).
        Index("ix_sweeps_finished_at", "finished_at"),
    )

    def __repr__(self) -> str:
        return f"<Sweep {self.id} {self.method} {self.runs_total} runs>"


class Run(Job, Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # The run's number in its epoch and statistics rows (see the module docstring).
    seq: Mapped[int] = mapped_column(Integer, unique=True, default=next_run_seq())
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), index=True
    )
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    network: Mapped[dict] = mapped_column(JSON)  # normalised, every default filled in
    training: Mapped[dict] = mapped_column(JSON)
    init_from_run_id: Mapped[str | None] = mapped_column(String(36))
    # The client's label and metadata: a name (not unique), and tags {key: value} that
    # lists filter on (GET /v1/runs?tag=key:value).
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    epochs_total: Mapped[int] = mapped_column(Integer)
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    # Kept whatever its age (worker/retention.py).
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Statistics are kept for every epoch up to this one, then thinned (service/statstore.py);
    # None: for every epoch.
    stats_thinned_after: Mapped[int | None] = mapped_column(Integer)
    # What its epoch and statistics rows count toward the tenant's stored bytes, kept by the
    # worker that writes them (service/usage.py).
    rows_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Where each claim that discarded rows went back to, in order: [[phase, epoch], ...]
    # (worker/lease.py forget_after). Event streams compare it with what they have sent.
    rewinds: Mapped[list | None] = mapped_column(JSON)
    # A sweep's child: its sweep, and the values its parameters took ({json path: value}).
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"))
    sweep_parameters: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (
        # A tenant's list, newest first (and every lookup by tenant).
        Index("ix_runs_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        # A sweep's children by status (its counts, the pending ones to release).
        Index("ix_runs_sweep_id_status", "sweep_id", "status"),
        # A tenant's runs of one name (GET /v1/runs?name=).
        Index("ix_runs_tenant_id_name", "tenant_id", "name"),
        # A tenant's active runs (the TENANT_MAX_ACTIVE_RUNS check).
        Index("ix_runs_tenant_id_status", "tenant_id", "status"),
        # The oldest finished runs first (retention: worker/retention.py).
        Index("ix_runs_finished_at", "finished_at"),
    )
    # One INSERT a run: SQLite computes next_run_seq() once for all the rows of a multi-row
    # INSERT, which is how a flush of several runs would write them otherwise.
    __mapper_args__ = {"batch": False}

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.status} {self.epochs_completed}/{self.epochs_total}>"


class Epoch(Base):
    __tablename__ = "epochs"

    # The 4-byte columns before the 2-byte ones: PostgreSQL aligns each column to its size,
    # so none is padded but the last before the floats.
    run_seq: Mapped[int] = mapped_column(ForeignKey("runs.seq", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(Phase)
    layer: Mapped[int | None] = mapped_column(SmallInteger)  # pretrain: the layer pretrained
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    # seq2seq runs: the fraction of sequences right in every token; null for other tasks.
    train_exact_match: Mapped[float | None] = mapped_column(Float)
    val_exact_match: Mapped[float | None] = mapped_column(Float)

    # One b-tree on SQLite (the key holds the row), not a table and an index repeating it.
    __table_args__ = (PrimaryKeyConstraint("run_seq", "phase", "epoch"),
                      {"sqlite_with_rowid": False})

    def __repr__(self) -> str:
        return f"<Epoch {self.run_seq} {self.phase} {self.epoch} loss={self.train_loss}>"


# The statistics of one weight array (an entry of a layer-stats row's `params`), then those
# of a layer's row, in the order service/statstore.py stores them.
PARAM_STAT_FIELDS = (
    "grad_mean_abs", "grad_norm", "grad_max_abs", "grad_std",
    "weight_mean_abs", "weight_norm", "weight_max_abs", "weight_std",
)
STAT_FIELDS = (*PARAM_STAT_FIELDS, "act_mean", "act_saturated_fraction", "act_dead_fraction")


class EpochStats(Base):
    """Every layer's statistics in one epoch of a run, packed (service/statstore.py has the
    form, and the rule that decides which epochs keep a row)."""

    __tablename__ = "epoch_stats"

    run_seq: Mapped[int] = mapped_column(ForeignKey("runs.seq", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(Phase)
    layout: Mapped[str] = mapped_column(Text)  # e.g. "0:dense_0:W*,b;1:dense_1:W*,b"
    figures: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (or float64) numbers

    __table_args__ = (PrimaryKeyConstraint("run_seq", "phase", "epoch"),
                      {"sqlite_with_rowid": False})

    def __repr__(self) -> str:
        return f"<EpochStats {self.run_seq} {self.phase} {self.epoch} {self.layout!r}>"


def of_run(entity: type[Epoch] | type[EpochStats], run_id: ColumnElement[str] | str
           ) -> ColumnElement[bool]:
    """SQL: the entity's rows of the run whose id is `run_id` (its seq is read once, then
    the primary key's index finds the rows)."""
    return entity.run_seq == select(Run.seq).where(Run.id == run_id).scalar_subquery()


class EventStream(Base):
    """An open GET /v1/runs/{run_id}/events, counted against TENANT_MAX_EVENT_STREAMS by
    every API process. The process serving it renews `seen_at`; a row it stopped renewing
    (the process died) no longer counts and is deleted (service/events.py)."""

    __tablename__ = "event_streams"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_event_streams_tenant_id_seen_at", "tenant_id", "seen_at"),)

    def __repr__(self) -> str:
        return f"<EventStream {self.id} tenant={self.tenant_id}>"


class Artifact(Base):
    """Stored weights: `initial` (inline or from another run), the latest `checkpoint`
    (opaque training state, for resuming), `final` and `best` (nn.Model npz bytes).

    `phase` and `epoch` say where a checkpoint was taken: ("train", e) after training epoch
    e, ("pretrain", p) after pretraining epoch p (nn.checkpoint_position); other kinds are
    "train"."""

    __tablename__ = "artifacts"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    phase: Mapped[str] = mapped_column(String(20), default="train", server_default="train")
    epoch: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))

    def __repr__(self) -> str:
        return f"<Artifact {self.run_id} {self.kind} {self.phase} epoch={self.epoch}>"


# ---- webhooks ----------------------------------------------------------------------------
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


class Webhook(Base):
    """A tenant's endpoint that is sent the events it subscribed to (service/webhooks.py).

    The secret signs every delivery, so it is stored as it is (it must be recoverable);
    `previous_secret` signs too, beside it, until `previous_secret_expires_at` (a rotation's
    grace period). `failing_since` is the first failed attempt since the last success: an
    endpoint failing for WEBHOOK_DISABLE_AFTER_SECONDS is disabled (`disabled_at`, with
    `disabled_reason`) and is sent nothing more until a PATCH enables it again."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list] = mapped_column(JSON)  # event types, or ["*"]: every type
    description: Mapped[str | None] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_webhooks_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )

    def __repr__(self) -> str:
        return f"<Webhook {self.id} {self.url!r}{' disabled' if self.disabled_at else ''}>"


class WebhookDelivery(Base):
    """One event to send to one webhook: the outbox. Written in the transaction that made
    the event happen (service.webhooks.emit), then sent, and retried, by the webhook worker.

    `body` is the exact JSON sent every time, and `event_id` the `webhook-id` header of
    every attempt. `attempts` counts the attempts begun (it fences their results);
    `locked_until` covers one in flight; `published_at` is when a wake-up message was last
    sent for it."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # A webhook's delivery log, newest first.
        Index("ix_webhook_deliveries_webhook_id_created_at_id", "webhook_id", "created_at",
              "id"),
        # The dispatcher's question: pending deliveries that are due.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    def __repr__(self) -> str:
        return f"<WebhookDelivery {self.id} {self.event_type} {self.status} #{self.attempts}>"


class WebhookAttempt(Base):
    """One attempt at a delivery, as the delivery log shows it."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_s: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<WebhookAttempt {self.delivery_id} #{self.attempt} {self.status_code}>"


# ---- model aliases ---------------------------------------------------------------------------
MODEL_WEIGHTS = ("final", "best")


class ModelAlias(Base):
    """A tenant's name for one run's weights (PUT /v1/models/{name}): what
    POST /v1/models/{name}/predict answers with. `version` is the newest of its
    `ModelVersion`s, the one it points at now.

    The run's foreign key is RESTRICT: a run an alias points at cannot be deleted (the API
    says which alias first; retention skips it: worker/retention.py)."""

    __tablename__ = "model_aliases"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="RESTRICT"), index=True)
    weights: Mapped[str] = mapped_column(String(20))  # final | best
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<ModelAlias {self.name!r} v{self.version} -> {self.run_id} {self.weights}>"


class ModelVersion(Base):
    """Where an alias pointed, one row per PUT that moved it. Its run may since have been
    deleted (only the current version keeps its run), so `run_id` is no foreign key."""

    __tablename__ = "model_versions"

    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    weights: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "name"],
                                ["model_aliases.tenant_id", "model_aliases.name"],
                                ondelete="CASCADE"),
    )

    def __repr__(self) -> str:
        return f"<ModelVersion {self.name!r} v{self.version} -> {self.run_id} {self.weights}>"


# ---- batch predictions -----------------------------------------------------------------------
class Prediction(Job, Base):
    """A batch prediction job (POST /v1/predictions): a run's weights over a data set, run by
    a worker in chunks of `chunk_rows` rows, each stored as it is made (`PredictionChunk`).

    It is a job as a run is, with the same lifecycle and the same lease columns, claimed,
    fenced, released and reconciled by the same functions (worker/lease.py, keyed by the
    job's class); a worker that dies leaves the chunks it committed, and the next claim goes
    on from the first chunk missing. `run_id` is no foreign key: the job keeps its result when
    its run is deleted (a job still queued then fails with invalid_data)."""

    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), index=True
    )
    run_id: Mapped[str] = mapped_column(String(36))
    weights: Mapped[str] = mapped_column(String(20))  # final | best
    model: Mapped[str | None] = mapped_column(String(200))  # the alias it was asked by
    model_version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    rows_total: Mapped[int] = mapped_column(Integer)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    chunk_rows: Mapped[int] = mapped_column(Integer)
    # The data set's classes when the model is a classifier: chunks store label indices.
    classes: Mapped[list | None] = mapped_column(JSON)
    # What its chunks count toward the tenant's stored bytes (service/usage.py).
    result_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_predictions_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )

    def __repr__(self) -> str:
        return f"<Prediction {self.id} {self.status} {self.rows_done}/{self.rows_total}>"


class PredictionChunk(Base):
    """Rows [chunk * chunk_rows, ...) of a prediction's result: an .npz of `outputs`, and for
    classifiers `labels` (indices into the job's classes) and `probabilities`
    (service/predictions.py). Written once each, in the transaction that fences the lease."""

    __tablename__ = "prediction_chunks"

    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True
    )
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))

    def __repr__(self) -> str:
        return f"<PredictionChunk {self.prediction_id} #{self.chunk} rows={self.rows}>"
