"""Retention: what the reconciler deletes, so that storage does not grow without end.

Each pass of the reconciler (worker/reconcile.py):

- deletes finished runs (succeeded, failed, cancelled) whose `finished_at` is older than
  RUN_RETENTION_SECONDS (0, the default: never), oldest first, with their rows and weights
  (ON DELETE CASCADE), unless pinned (PATCH /v1/runs/{id}) or named by a model alias; at
  most BATCH a pass, each in its own transaction (a run of 100,000 epochs is as many rows),
  each a compare-and-set on the same conditions, so a pin that commits first wins;
- deletes finished batch predictions older than that too, with their stored results, at
  most BATCH a pass;
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
from service.models import Artifact, ModelAlias, Prediction, Run
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


def expired_prediction(now: datetime, seconds: float) -> sa.ColumnElement[bool]:
    """Finished batch predictions retention deletes: older than `seconds`."""
    return sa.and_(Prediction.status.in_(FINISHED_STATUSES),
                   Prediction.finished_at < lease.at(now - timedelta(seconds=seconds)))


def sweep(now: datetime, config: Mapping[str, Any], batch: int = BATCH) -> dict[str, int]:
    """One pass (see the module docstring), deleting at most `batch` runs and `batch` batch
    predictions: how many runs, predictions and checkpoints were deleted and free pages
    given back."""
    deleted = predictions = 0
    seconds = float(config["RUN_RETENTION_SECONDS"])
    if seconds > 0:
        deleted = _delete_oldest(Run, expired(now, seconds), batch)
        predictions = _delete_oldest(Prediction, expired_prediction(now, seconds), batch)
    with session_scope() as session:
        checkpoints = session.execute(sa.delete(Artifact).where(
            Artifact.kind == "checkpoint",
            Artifact.run_id.in_(sa.select(Run.id).where(Run.status.in_(FINISHED_STATUSES)))),
            execution_options=lease.NO_SYNC).rowcount
    return {"deleted": deleted, "predictions": predictions, "checkpoints": checkpoints,
            "pages": free_pages(engine())}


def _delete_oldest(job: type[Run] | type[Prediction], due: sa.ColumnElement[bool],
                   batch: int) -> int:
    """Delete up to `batch` of the jobs `due` selects, oldest finished first, each in its own
    transaction and again only if still `due`: how many."""
    with session_scope() as session:
        ids = session.scalars(sa.select(job.id).where(due).order_by(job.finished_at)
                              .limit(batch)).all()
    deleted = 0
    for ident in ids:
        with session_scope() as session:
            deleted += session.execute(sa.delete(job).where(job.id == ident, due),
                                       execution_options=lease.NO_SYNC).rowcount
    return deleted
