"""The Celery tasks: thin wrappers that take ids only and run in the app's context."""

from __future__ import annotations

from celery import shared_task
from flask import current_app

from service.queue import RECONCILE_TASK, TRAIN_TASK
from worker import memory, training
from worker import reconcile as reconciler


@shared_task(name=TRAIN_TASK)
def train_run(run_id: str) -> str:
    """Train the run within the memory a run may take (worker/memory.py)."""
    with memory.limited(current_app.config["WORKER_MEMORY_LIMIT_BYTES"]):
        return training.train_run(run_id)


@shared_task(name=RECONCILE_TASK)
def reconcile() -> dict[str, int]:
    return reconciler.reconcile()
