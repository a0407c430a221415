"""The Celery tasks: thin wrappers that take ids only and run in the app's context."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Ignore
from flask import current_app

from service.queue import DELIVER_TASK, DISPATCH_TASK, PREDICT_TASK, RECONCILE_TASK, TRAIN_TASK
from worker import memory, predictions, training, webhooks
from worker import reconcile as reconciler


@shared_task(name=TRAIN_TASK)
def train_run(run_id: str) -> str:
    """Train the run within the memory a run may take. A message that did not end its run
    here (a duplicate, a run handed back, ...) is logged by Celery as "ignored", not as a
    task that succeeded; training.train_run has logged what happened."""
    with memory.limited(current_app.config["WORKER_MEMORY_LIMIT_BYTES"]):
        outcome = training.train_run(run_id)
    if outcome in training.NOT_TRAINED:
        raise Ignore(outcome)
    return outcome


@shared_task(name=PREDICT_TASK)
def run_prediction(prediction_id: str) -> str:
    """Run the batch prediction within the memory a run may take; a message that did not
    end its job here is logged as "ignored"."""
    with memory.limited(current_app.config["WORKER_MEMORY_LIMIT_BYTES"]):
        outcome = predictions.run_prediction(prediction_id)
    if outcome in predictions.NOT_RUN:
        raise Ignore(outcome)
    return outcome


@shared_task(name=RECONCILE_TASK)
def reconcile() -> dict[str, int]:
    return reconciler.reconcile()


@shared_task(name=DELIVER_TASK)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt at a webhook delivery (worker/webhooks.py); a duplicate message is
    logged as "ignored"."""
    outcome = webhooks.deliver(delivery_id)
    if outcome in ("dropped", "superseded"):
        raise Ignore(outcome)
    return outcome


@shared_task(name=DISPATCH_TASK)
def dispatch_webhooks() -> dict[str, int]:
    return reconciler.dispatch_deliveries()
