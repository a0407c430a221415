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
- sweeps not settled release the children they may run now (what a worker that died
  after finishing a child left held, what a cancel or another run of the tenant freed), and
  are settled once every child is done (service/sweeps.py);
- old finished runs and batch predictions, and finished runs' checkpoints, are deleted
  (worker/retention.py).

Batch predictions are jobs as runs are (worker/lease.py): the same pass settles and
republishes them, by the same rules.

`dispatch_deliveries` does the same for webhook deliveries, every WEBHOOK_DISPATCH_SECONDS on
the webhook worker (beat sends it to the webhook queue, so training never delays it): it
sends the pending deliveries that are due and have no message on its way (a retry whose
time came; a message lost, or not acted on for REQUEUE_AFTER_SECONDS; an attempt whose
worker died, once its claim expired), and deletes the log of deliveries finished more than
DELIVERY_LOG_DAYS ago.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from service.db import connection_lost, session_scope
from service import sweeps
from service.models import Prediction, Run, Sweep, WebhookDelivery, utcnow
from service.queue import publish_run, send_delivery, send_prediction, send_run
from worker import lease, retention

log = logging.getLogger(__name__)

# Runs republished (deliveries sent) per pass at most; the next pass takes the rest.
BATCH = 500
# Finished webhook deliveries (and their attempts) are kept this long for the delivery log.
DELIVERY_LOG_DAYS = 30


def reconcile() -> dict[str, int]:
    """One pass, in the app context; how many runs were settled and republished. While the
    database is unreachable a pass does nothing but say so: the next one catches up."""
    return _unless_unreachable("reconcile", _pass, {"settled": 0, "republished": 0, "deleted": 0,
                                                   "predictions": 0, "checkpoints": 0,
                                                   "pages": 0})


def dispatch_deliveries() -> dict[str, int]:
    """One pass of the webhook dispatcher, in the app context: how many deliveries were
    sent and how many old ones purged."""
    return _unless_unreachable("dispatch", _dispatch, {"sent": 0, "purged": 0})


def _unless_unreachable(name: str, one_pass: Callable[[], dict[str, int]],
                        nothing: dict[str, int]) -> dict[str, int]:
    try:
        return one_pass()
    except sa.exc.DBAPIError as exc:
        if not connection_lost(exc):
            raise
        log.warning("%s: the database is unreachable (%s); trying again next pass", name,
                    type(exc).__name__)
        return nothing


JOBS: tuple[tuple[lease.Job, Callable[[str], None]], ...] = (
    (Run, send_run), (Prediction, send_prediction))


def _pass() -> dict[str, int]:
    cfg = current_app.config
    now = utcnow()
    settled = republished = 0
    for job, send in JOBS:
        with session_scope() as session:
            settled += lease.settle_abandoned(session, now=now, max_attempts=cfg["MAX_ATTEMPTS"],
                                              job=job)
        republished += _republish(job, send, now)
    if settled or republished:
        log.info("reconcile: %d settled, %d republished", settled, republished)
    released, sweeps_settled = _sweeps(int(cfg["TENANT_MAX_ACTIVE_RUNS"]))
    if released or sweeps_settled:
        log.info("reconcile: %d sweep children released, %d sweeps settled", released,
                 sweeps_settled)
    swept = retention.sweep(now, cfg)
    if swept["deleted"] or swept["predictions"] or swept["checkpoints"]:
        log.info("reconcile: deleted %d old runs, %d old batch predictions and %d checkpoints "
                 "of finished runs", swept["deleted"], swept["predictions"],
                 swept["checkpoints"])
    return {"settled": settled, "republished": republished, **swept}


def _sweeps(tenant_limit: int) -> tuple[int, int]:
    """Every sweep not yet settled: release the children it may run now and settle it when
    they are all done (service/sweeps.py); each in a transaction of its own. How many
    children were released, and sweeps settled."""
    with session_scope() as session:
        open_ids = session.scalars(sa.select(Sweep.id).where(Sweep.finished_at.is_(None))
                                   .order_by(Sweep.created_at).limit(BATCH)).all()
    released = settled = 0
    for sweep_id in open_ids:
        with session_scope() as session:
            ids = sweeps.release(session, sweep_id, tenant_limit)
            settled += sweeps.settle(session, sweep_id) is not None
        for run_id in ids:
            publish_run(run_id)  # a lost message: a later pass republishes it (queued)
        released += len(ids)
    return released, settled


def _republish(job: lease.Job, send: Callable[[str], None], now: datetime) -> int:
    """Send the messages of the jobs whose message is missing (`_due`): how many."""
    cfg = current_app.config
    due = _due(now, cfg["REQUEUE_AFTER_SECONDS"], cfg["MAX_ATTEMPTS"], job)
    with session_scope() as session:
        candidates = session.scalars(sa.select(job.id).where(due).limit(BATCH)).all()
    republished = 0
    for job_id in candidates:
        # Mark it published first: of two reconcilers, only the one whose UPDATE matched
        # sends. If the send then fails, the next pass after REQUEUE_AFTER_SECONDS retries.
        with session_scope() as session:
            won = session.execute(
                sa.update(job).where(job.id == job_id, due).values(published_at=now),
                execution_options=lease.NO_SYNC,
            ).rowcount == 1
        if won:
            send(job_id)
            republished += 1
    return republished


def _due(now: datetime, requeue_after: float, max_attempts: int, job: lease.Job = Run
         ) -> sa.ColumnElement[bool]:
    """Jobs whose wake-up message is missing: queued ones not picked up for a while, and
    abandoned ones not republished since their lease expired."""
    stale = lease.at(now - timedelta(seconds=requeue_after))
    last_sent = sa.func.coalesce(job.published_at, job.created_at)
    return sa.or_(
        sa.and_(job.status == "queued", last_sent < stale),
        sa.and_(
            lease.abandoned(now, job),
            job.attempts < max_attempts,
            sa.or_(job.published_at.is_(None), job.published_at < job.lease_expires_at,
                   job.published_at < stale),
        ),
    )


def _dispatch() -> dict[str, int]:
    now = utcnow()
    due = _due_delivery(now, current_app.config["REQUEUE_AFTER_SECONDS"])
    with session_scope() as session:
        candidates = session.scalars(sa.select(WebhookDelivery.id).where(due)
                                     .order_by(WebhookDelivery.next_attempt_at)
                                     .limit(BATCH)).all()
    sent = 0
    for delivery_id in candidates:
        with session_scope() as session:  # marked first: of two dispatchers, one sends
            won = session.execute(
                sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, due)
                .values(published_at=now), execution_options=lease.NO_SYNC,
            ).rowcount == 1
        if won:
            send_delivery(delivery_id)
            sent += 1
    with session_scope() as session:
        purged = session.execute(
            sa.delete(WebhookDelivery).where(
                WebhookDelivery.status != "pending",
                WebhookDelivery.finished_at < lease.at(now - timedelta(days=DELIVERY_LOG_DAYS))),
            execution_options=lease.NO_SYNC,
        ).rowcount
    if sent or purged:
        log.info("dispatch: %d webhook deliveries sent, %d old ones purged", sent, purged)
    return {"sent": sent, "purged": purged}


def _due_delivery(now: datetime, requeue_after: float) -> sa.ColumnElement[bool]:
    """Pending deliveries whose time has come, with no attempt in flight and no message on
    its way (none sent since their last attempt, or one sent long ago)."""
    return sa.and_(
        WebhookDelivery.status == "pending",
        WebhookDelivery.next_attempt_at <= lease.at(now),
        sa.or_(WebhookDelivery.locked_until.is_(None),
               WebhookDelivery.locked_until < lease.at(now)),
        sa.or_(WebhookDelivery.published_at.is_(None),
               WebhookDelivery.published_at < lease.at(now - timedelta(seconds=requeue_after))),
    )
