"""Every setting of the service, with its default, in one place.

`create_app()` starts from `DEFAULTS`, then reads environment variables prefixed with
`BACKPROP_` (`BACKPROP_DATABASE_URL=...` sets `DATABASE_URL`; values are parsed as JSON when
they can be, so `BACKPROP_LEASE_SECONDS=30` is an int), then the test dict. The defaults are
the embedded ones: SQLite in WAL mode and kombu's filesystem broker under `./var/`, so a
newcomer needs no server.
"""

from __future__ import annotations

import os

VAR_DIR = os.path.abspath(os.environ.get("BACKPROP_VAR_DIR", "var"))

DEFAULTS: dict[str, object] = {
    # Where runs, datasets and weights live. PostgreSQL in deployment:
    # postgresql+psycopg://user:pass@host/db
    "DATABASE_URL": f"sqlite:///{os.path.join(VAR_DIR, 'backprop.db')}",
    # Celery broker. "filesystem://" is kombu's serverless transport (embedded default);
    # redis://host:6379/0 in deployment.
    "BROKER_URL": "filesystem://",
    "BROKER_FOLDER": os.path.join(VAR_DIR, "broker"),
    # Prefix for every Redis key the broker uses (lets tests and a dev server share one Redis).
    "BROKER_KEYPREFIX": "",
    # Name of the Celery queue that carries training messages.
    "QUEUE": "backprop",
    # A running run whose lease is older than this is considered lost and is requeued.
    "LEASE_SECONDS": 30,
    # How often the worker writes heartbeat + buffered epoch rows (seconds).
    "FLUSH_SECONDS": 1.0,
    # Checkpoint the training state every this many seconds (at an epoch boundary).
    "CHECKPOINT_SECONDS": 10.0,
    # The periodic reconciler's interval (seconds).
    "RECONCILE_SECONDS": 15,
    # A queued run not picked up for this long gets its message republished (seconds).
    "REQUEUE_AFTER_SECONDS": 60,
    # A run that has been claimed this many times and still not finished fails (worker_lost).
    "MAX_ATTEMPTS": 3,
    # Wall-clock limit of one run (seconds); over it the run fails with code "timeout".
    "RUN_TIME_LIMIT_SECONDS": 3600,
    # Largest accepted request body (bytes).
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,
    # Page size of list endpoints when ?limit= is not given, and its maximum.
    "PAGE_DEFAULT": 50,
    "PAGE_MAX": 1000,
    # Loaded models kept in memory by the predict endpoint.
    "MODEL_CACHE_SIZE": 64,
    # Most input rows one POST /v1/runs/{id}/predict may send.
    "PREDICT_MAX_ROWS": 10_000,
    # Largest stored data set (its npz bytes; also bounds what an uploaded .npz may expand to).
    "DATASET_MAX_BYTES": 256 * 1024 * 1024,
}
