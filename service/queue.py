"""The Celery side of the service, configured in this one place.

The run row is the truth and the broker only carries wake-up messages: a message names a run
id, and a worker that gets one claims the run with a compare-and-set on the row (worker/), so
a duplicate or stale message is harmless and a lost one is republished by the reconciler.

The API imports this module (publish_run, broker_ok) and never `worker`; the worker entry
module `worker.app` calls `celery_init_app` and registers the tasks by the names below.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from celery import Celery, Task
from flask import Flask, current_app

from service.db import session_scope
from service.models import Prediction, Run, utcnow

TRAIN_TASK = "backprop.train_run"
# Batch predictions go to the training queue: the same workers run them.
PREDICT_TASK = "backprop.run_prediction"
RECONCILE_TASK = "backprop.reconcile"
# Webhooks have a queue and a worker of their own (worker/webhook_worker.py): a delivery
# must not wait behind an hour of training.
DELIVER_TASK = "backprop.deliver_webhook"
DISPATCH_TASK = "backprop.dispatch_webhooks"

log = logging.getLogger(__name__)


def celery_init_app(app: Flask) -> Celery:
    """A Celery app whose tasks run inside `app`'s context (Flask's Celery example)."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_config(app.config))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def celery_config(config: dict[str, Any]) -> dict[str, Any]:
    """Every Celery setting of the service, from the Flask config."""
    limit = float(config["RUN_TIME_LIMIT_SECONDS"])
    url = config["BROKER_URL"]
    return {
        "broker_url": url,
        "broker_transport_options": _transport_options(config, limit),
        "broker_use_ssl": _broker_tls(config),
        "broker_connection_retry_on_startup": True,
        # Messages carry ids only, as JSON; never pickle.
        "task_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # A message is acknowledged after the task returns and requeued if the worker process
        # dies, and a worker holds one message at a time, so nothing waits behind a long run
        # in a busy worker's buffer. Duplicates this may cause are dropped by the claim.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # The run row is the result; there is no result backend.
        "task_ignore_result": True,
        # Backstops only: the run's own deadline (started_at + RUN_TIME_LIMIT_SECONDS) is
        # enforced cooperatively between epochs, and ends the run as "timeout" with its rows.
        "task_soft_time_limit": limit + 60,
        "task_time_limit": limit + 120,
        "task_default_queue": config["QUEUE"],
        # Publishing happens inside an HTTP request: fail within about a second, not after
        # kombu's default retries; the reconciler republishes a run whose message was lost.
        "task_publish_retry_policy": {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5,
        },
        # A lost broker connection must not kill a training task: its lease, not its message,
        # decides who owns the run.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # The reconciler, sent by `celery beat` (one per deployment; it is safe to run more).
        # In-memory schedule: nothing to persist, no file to write in a read-only container.
        # A reconcile message that waits longer than one interval (every worker busy) is
        # dropped instead of piling up behind training runs.
        "beat_scheduler": "celery.beat:Scheduler",
        "beat_schedule": {
            "reconcile": {
                "task": RECONCILE_TASK,
                "schedule": float(config["RECONCILE_SECONDS"]),
                "options": {"expires": float(config["RECONCILE_SECONDS"])},
            },
            # Sends the webhook deliveries that are due (worker/reconcile.py).
            "dispatch-webhooks": {
                "task": DISPATCH_TASK,
                "schedule": float(config["WEBHOOK_DISPATCH_SECONDS"]),
                "options": {"expires": float(config["WEBHOOK_DISPATCH_SECONDS"]),
                            "queue": webhook_queue(config)},
            },
        },
    }


def webhook_queue(config: dict[str, Any]) -> str:
    """The queue of webhook deliveries: QUEUE's name + ".webhooks"."""
    return f"{config['QUEUE']}.webhooks"


def _transport_options(config: dict[str, Any], limit: float) -> dict[str, Any]:
    url = config["BROKER_URL"]
    if url.startswith("filesystem://"):
        # kombu's serverless transport: one folder is both the in- and the out-box, so
        # producer and consumer processes share it; exchange tables go beside it (the
        # default "control" folder would be relative to the working directory).
        folder = config["BROKER_FOLDER"]
        messages = os.path.join(folder, "messages")
        control = os.path.join(folder, "control")
        for path in (messages, control):
            os.makedirs(path, exist_ok=True)
        return {"data_folder_in": messages, "data_folder_out": messages,
                "control_folder": control, "store_processed": False}
    if url.startswith(("redis://", "rediss://")):
        return {
            "global_keyprefix": config["BROKER_KEYPREFIX"],
            # An unacknowledged message is redelivered after this long: it must outlive the
            # longest run, or a healthy long run would get a second (dropped) delivery.
            "visibility_timeout": int(limit + 600),
            "socket_connect_timeout": 5,
        }
    return {}


def _broker_tls(config: dict[str, Any]) -> dict[str, Any] | bool:
    """redis-py's TLS options for a rediss:// broker: the server's certificate verified
    (kombu, given a rediss:// URL and no options, would not verify it), against
    BROKER_SSL_CA_CERTS or the system's CAs; a client certificate when one is given."""
    if not config["BROKER_URL"].startswith("rediss://"):
        return False
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": config["BROKER_SSL_CA_CERTS"],
            "ssl_certfile": config["BROKER_SSL_CERTFILE"],
            "ssl_keyfile": config["BROKER_SSL_KEYFILE"]}


# Guards the lazy creation of an app's Celery app (the API's threads publish at once).
_init_lock = threading.Lock()


def _celery(app: Flask | None = None) -> Celery:
    """The Celery app of `app` (the current app by default), made on first use: one per
    Flask app, however many threads ask at once."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    celery_app = app.extensions.get("celery")
    if celery_app is None:
        with _init_lock:
            celery_app = app.extensions.get("celery") or celery_init_app(app)
    return celery_app


def prepare(app: Flask) -> None:
    """Make the API process ready to publish before it serves (service/wsgi.py): its Celery
    app, and a producer from its pool, which imports the broker's transport and client
    library. Otherwise the first POST /v1/runs of each gunicorn process pays that, about a
    second on a busy machine (several seconds were seen), while its other threads wait.
    Opens no connection (the broker may be down at start; a publish connects)."""
    with _celery(app).producer_or_acquire():
        pass


def send_run(run_id: str) -> None:
    """Send the training message for `run_id` (raises when the broker is unreachable)."""
    _celery().send_task(TRAIN_TASK, args=[run_id], queue=current_app.config["QUEUE"])


def send_prediction(prediction_id: str) -> None:
    """Send the message for a batch prediction (raises when the broker is unreachable)."""
    _celery().send_task(PREDICT_TASK, args=[prediction_id], queue=current_app.config["QUEUE"])


def send_delivery(delivery_id: str) -> None:
    """Wake the webhook worker for a committed delivery (raises when the broker is
    unreachable; the dispatcher sends it again later)."""
    _celery().send_task(DELIVER_TASK, args=[delivery_id],
                        queue=webhook_queue(current_app.config))


def publish_run(run_id: str) -> None:
    """Wake a worker for a committed, queued run, and record when (`Run.published_at`).

    Called by the API right after it commits the run. Raises when the broker is unreachable;
    the run stays queued with no `published_at`, and the reconciler republishes it.
    """
    _published(Run, run_id, send_run)


def publish_prediction(prediction_id: str) -> None:
    """publish_run for a committed, queued batch prediction."""
    _published(Prediction, prediction_id, send_prediction)


def _published(job: type[Run] | type[Prediction], ident: str,
               send: Callable[[str], None]) -> None:
    send(ident)
    with session_scope() as session:
        session.execute(
            sa.update(job).where(job.id == ident).values(published_at=utcnow()),
            execution_options={"synchronize_session": False},
        )


def broker_ok(timeout: float = 1.0) -> bool:
    """Readiness: can we connect to the broker within about `timeout` seconds?"""
    try:
        options = {"socket_connect_timeout": timeout}
        with _celery().connection_for_write(transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            conn.default_channel  # the Redis transport only talks to the server here
        return True
    except Exception as exc:  # any failure means "not ready"; say why in the log
        log.warning("broker not reachable: %s", exc)
        return False
