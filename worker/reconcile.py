"""The reconciler: the broker may lose a message and a worker may die; the rows say so.

`celery beat` sends the reconcile task every RECONCILE_SECONDS (service/queue.py). It runs on
any free worker; every change it makes is a compare-and-set, so two reconcilers (a second
beat, a manual run) are harmless, and a message it publishes twice is dropped by the claim.

- cancelling runs whose worker died end cancelled; runs claimed MAX_ATTEMPTS times whose
  worker died fail with "worker_lost" (lease.settle_abandoned);
- queued runs whose message is older than REQUEUE_AFTER_SECONDS (or never went out) are
  republished;
- running runs whose lease expired are republished once per expiry (and again every
  REQUEUE_AFTER_SECONDS while no worker takes them): the next worker's claim takes the run
  over and resumes it from its checkpoint;
- old finished runs, and finished runs' checkpoints, are deleted (worker/retention.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from service.db import connection_lost, session_scope
from service.models import Run, utcnow
from service.queue import send_run
from worker import lease, retention

log = logging.getLogger(__name__)

# Runs republished per pass at most; the next pass takes the rest.
BATCH = 500


def reconcile() -> dict[str, int]:
    """One pass, in the app context; how many runs were settled and republished. While the
    database is unreachable a pass does nothing but say so: the next one catches up."""
    try:
        return _pass()
    except sa.exc.DBAPIError as exc:
        if not connection_lost(exc):
            raise
        log.warning("reconcile: the database is unreachable (%s); trying again next pass",
                    type(exc).__name__)
        return {"settled": 0, "republished": 0, "deleted": 0, "checkpoints": 0, "pages": 0}


def _pass() -> dict[str, int]:
    cfg = current_app.config
    now = utcnow()
    with session_scope() as session:
        settled = lease.settle_abandoned(session, now=now, max_attempts=cfg["MAX_ATTEMPTS"])
    due = _due(now, cfg["REQUEUE_AFTER_SECONDS"], cfg["MAX_ATTEMPTS"])
    with session_scope() as session:
        candidates = session.scalars(sa.select(Run.id).where(due).limit(BATCH)).all()
    republished = 0
    for run_id in candidates:
        # Mark it published first: of two reconcilers, only the one whose UPDATE matched
        # sends. If the send then fails, the next pass after REQUEUE_AFTER_SECONDS retries.
        with session_scope() as session:
            won = session.execute(
                sa.update(Run).where(Run.id == run_id, due).values(published_at=now),
                execution_options=lease.NO_SYNC,
            ).rowcount == 1
        if won:
            send_run(run_id)
            republished += 1
    if settled or republished:
        log.info("reconcile: %d settled, %d republished", settled, republished)
    swept = retention.sweep(now, cfg)
    if swept["deleted"] or swept["checkpoints"]:
        log.info("reconcile: deleted %d old runs and %d checkpoints of finished runs",
                 swept["deleted"], swept["checkpoints"])
    return {"settled": settled, "republished": republished, **swept}


def _due(now: datetime, requeue_after: float, max_attempts: int) -> sa.ColumnElement[bool]:
    """Runs whose wake-up message is missing: queued ones not picked up for a while, and
    abandoned ones not republished since their lease expired."""
    stale = lease.at(now - timedelta(seconds=requeue_after))
    last_sent = sa.func.coalesce(Run.published_at, Run.created_at)
    return sa.or_(
        sa.and_(Run.status == "queued", last_sent < stale),
        sa.and_(
            lease.abandoned(now),
            Run.attempts < max_attempts,
            sa.or_(Run.published_at.is_(None), Run.published_at < Run.lease_expires_at,
                   Run.published_at < stale),
        ),
    )
