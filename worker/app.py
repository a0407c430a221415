"""The worker's entry module: `celery -A worker.app worker` and `celery -A worker.app beat`.

Building the Flask app at import time is right here, and only here: this module is the
process's entry point (like Flask's `make_celery.py`); the tasks take ids and load the rest.
"""

from __future__ import annotations

import gc
from typing import Any

import sqlalchemy as sa
from celery import signals

from nn.engines import kernel
from service import create_app, db, logs
from service.queue import celery_init_app
from worker import memory
from worker import health

flask_app = create_app()
celery = celery_init_app(flask_app)
health.init(celery, flask_app.config["HEARTBEAT_FILE"])


@sa.event.listens_for(db.engine(flask_app), "connect")
def _end_stuck_transactions(dbapi_connection: Any, _record: Any) -> None:
    """A worker paused or cut off inside one of its short transactions must not keep the
    run's row locked past its lease, where the row would hold up the worker taking it over:
    PostgreSQL ends such a session (and the paused worker, back, finds its lease gone)."""
    if db.engine(flask_app).dialect.name == "postgresql":
        ms = int(float(flask_app.config["LEASE_SECONDS"]) * 1000)
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {ms}")
        dbapi_connection.commit()


@signals.setup_logging.connect
def _setup_logging(loglevel: int | None = None, **_kwargs: Any) -> None:
    """Celery's processes log in the service's one format (service/logs.py), not Celery's:
    connecting this signal stops Celery from configuring logging itself."""
    logs.configure(str(flask_app.config["LOG_FORMAT"]), loglevel or "INFO")


@signals.worker_process_init.connect
def _prepare_pool_process(**_kwargs: Any) -> None:
    """What a pool process inherits from its parent (modules, the app, the OpenAPI schemas) is
    never garbage: out of the collector's way (gc.freeze), its full passes stop walking it
    (a full pass took ~50 ms, about once every 6 s of a small per-sample run). And BLAS's
    buffer is allocated before a run's memory limit applies (worker/memory.py), and the
    dense engine's compiled kernel is loaded (compiled on a machine's first start) before a
    run waits for it."""
    kernel.warm()
    gc.freeze()
    memory.warm_up()


import worker.shutdown  # noqa: E402,F401  (hands a run back on warm shutdown)
import worker.tasks  # noqa: E402,F401  (registers the tasks with `celery`)
