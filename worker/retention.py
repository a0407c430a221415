"""Retention: what the reconciler deletes, so that storage does not grow without end.

Each pass of the reconciler (worker/reconcile.py):

- deletes finished runs (succeeded, failed, cancelled) whose `finished_at` is older than
  RUN_RETENTION_SECONDS (0, the default: never), oldest first, with their rows and weights
  (ON DELETE CASCADE), unless pinned (PATCH /v1/runs/{id}) or named by a model alias; at
  most BATCH a pass, each in its own transaction (a run of 100,000 epochs is as many rows),
  each a compare-and-set on the same conditions, so a pin that commits first wins;
- deletes the checkpoints of finished runs: a run that ends drops its own (worker/training.py),
  these are of runs the reconciler itself ended (cancelled, or failed with worker_lost,
  after their worker died) and of databases from before;
- on SQLite, gives the pages deleted rows left free (here, or by DELETE /v1/runs/{id}) back
  to the file system (db.free_pages). PostgreSQL's autovacuum makes such space reusable
  without returning it (README.md, "Storage").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from service.db import engine, free_pages, session_scope
from service.models import Artifact, ModelAlias, Run
from service.serialize import FINISHED_STATUSES
from worker import lease

# Runs deleted per pass at most; the next pass takes the rest.
BATCH = 20


def aliased() -> sa.ColumnElement[bool]:
    """Runs a model alias points at (PUT /v1/models/{name}), which are kept."""
    return sa.exists().where(ModelAlias.run_id == Run.id)


def expired(now: datetime, seconds: float) -> sa.ColumnElement[bool]:
    """Finished runs retention deletes: older than `seconds`, not pinned, not aliased."""
    return sa.and_(Run.status.in_(FINISHED_STATUSES),
                   Run.finished_at < lease.at(now - timedelta(seconds=seconds)),
                   Run.pinned.is_(False), sa.not_(aliased()))


def sweep(now: datetime, config: Mapping[str, Any], batch: int = BATCH) -> dict[str, int]:
    """One pass (see the module docstring), deleting at most `batch` runs: how many runs
    and checkpoints were deleted and free pages given back."""
    deleted = 0
    seconds = float(config["RUN_RETENTION_SECONDS"])
    if seconds > 0:
        with session_scope() as session:
            due = session.scalars(sa.select(Run.id).where(expired(now, seconds))
                                  .order_by(Run.finished_at).limit(batch)).all()
        for run_id in due:
            with session_scope() as session:
                deleted += session.execute(
                    sa.delete(Run).where(Run.id == run_id, expired(now, seconds)),
                    execution_options=lease.NO_SYNC).rowcount
    with session_scope() as session:
        checkpoints = session.execute(sa.delete(Artifact).where(
            Artifact.kind == "checkpoint",
            Artifact.run_id.in_(sa.select(Run.id).where(Run.status.in_(FINISHED_STATUSES)))),
            execution_options=lease.NO_SYNC).rowcount
    return {"deleted": deleted, "checkpoints": checkpoints, "pages": free_pages(engine())}
