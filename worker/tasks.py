"""The Celery tasks: thin wrappers that take ids only and run in the app's context."""

from __future__ import annotations

from celery import shared_task

from service.queue import RECONCILE_TASK, TRAIN_TASK
from worker import reconcile as reconciler
from worker import training


@shared_task(name=TRAIN_TASK)
def train_run(run_id: str) -> str:
    return training.train_run(run_id)


@shared_task(name=RECONCILE_TASK)
def reconcile() -> dict[str, int]:
    return reconciler.reconcile()
