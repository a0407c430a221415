"""Every setting of the service, with its default, in one place.

`create_app()` starts from `DEFAULTS`, then reads environment variables prefixed with
`BACKPROP_` (`BACKPROP_DATABASE_URL=...` sets `DATABASE_URL`; values are parsed as JSON when
they can be, so `BACKPROP_LEASE_SECONDS=30` is an int), then the test dict. The defaults are
the embedded ones: SQLite in WAL mode and kombu's filesystem broker under `./var/`, so a
newcomer needs no server.
"""

from __future__ import annotations

import json
import os

VAR_DIR = os.path.abspath(os.environ.get("BACKPROP_VAR_DIR", "var"))

DEFAULTS: dict[str, object] = {
    # Where runs, datasets and weights live. PostgreSQL in deployment:
    # postgresql+psycopg://user:pass@host/db
    "DATABASE_URL": f"sqlite:///{os.path.join(VAR_DIR, 'backprop.db')}",
    # PostgreSQL: how long connecting may take, and TCP keepalives on every connection: a
    # connection to a dead server or over a cut network fails within about twice this
    # (seconds), in the API and the worker alike.
    "DATABASE_CONNECT_TIMEOUT_SECONDS": 10,
    "DATABASE_KEEPALIVE_SECONDS": 30,
    # PostgreSQL cancels a statement of the API (not the worker) running longer than this
    # (seconds; 0: no limit). Generous: the largest data set upload is one INSERT.
    "API_STATEMENT_TIMEOUT_SECONDS": 60,
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
    # Loaded models kept in memory by the predict endpoint (each API process has its own).
    "MODEL_CACHE_SIZE": 64,
    # Most input rows one POST /v1/runs/{id}/predict may send.
    "PREDICT_MAX_ROWS": 10_000,
    # Largest stored data set (its npz bytes; also bounds what an uploaded .npz may expand to,
    # counted as the float64 inputs and targets it becomes).
    "DATASET_MAX_BYTES": 256 * 1024 * 1024,
    # Most samples (rows) one data set may have; a CSV is read row by row and refused at the
    # first row past it, an .npz by its arrays' headers before anything is allocated.
    "DATASET_MAX_ROWS": 1_000_000,
    # Most values per sample (the product of a sample's shape: features, pixels, ...).
    "DATASET_MAX_FEATURES": 100_000,
    # ---- what one run may ask for (422 naming the field; nn has its own, larger, bounds) ----
    # Most layers in network.layers.
    "RUN_MAX_LAYERS": 100,
    # Widest layer: dense/rnn/lstm units, conv2d filters, embedding dim, encoder ff_units.
    "RUN_MAX_UNITS": 10_000,
    # Most trainable parameters (plan.n_params).
    "RUN_MAX_PARAMS": 5_000_000,
    # Most epochs (training.epochs, and training.pretrain.epochs per pretrained layer).
    "RUN_MAX_EPOCHS": 100_000,
    # Largest estimated compute of a run: (training + pretraining epochs) x samples in the
    # data set x parameters, about the multiply-adds of its forward passes.
    "RUN_MAX_COMPUTE": 10**12,
    # Runs one tenant may have queued, running or cancelling at once; past it POST /v1/runs
    # answers 429 too_many_runs with Retry-After.
    "TENANT_MAX_ACTIVE_RUNS": 20,
    # Event streams (GET /v1/runs/{run_id}/events) one tenant may have open at once, over
    # every API process; past it the endpoint answers 429 too_many_streams with Retry-After.
    "TENANT_MAX_EVENT_STREAMS": 20,
    # How often each API process looks for changes of the runs its event streams watch (one
    # query for all of them; seconds): about the longest a commit waits to become an event.
    "EVENTS_POLL_SECONDS": 0.5,
    # An event stream with nothing to say sends a comment line this often (seconds), so that
    # proxies keep it open and a client that went away is noticed.
    "EVENTS_KEEPALIVE_SECONDS": 15.0,
    # ---- tenancy ------------------------------------------------------------------------
    # The administrator's key (Authorization: Bearer <it>) for /v1/admin/*: tenants and their
    # API keys. None disables the admin endpoints (keys can still be made with
    # `backprop create-key`). At least 32 characters, e.g. `openssl rand -hex 32`.
    "ADMIN_KEY": None,
    # Where `backprop up` keeps the local tenant's API key in plain text (mode 0600), so each
    # start can print it. Only the embedded default writes it.
    "LOCAL_KEY_FILE": os.path.join(VAR_DIR, "api-key"),
    # An API process remembers a valid key's tenant this long (seconds) instead of looking
    # it up on every request: a revoked key keeps working for at most this long. 0: look
    # every key up every time.
    "API_KEY_CACHE_SECONDS": 5,
    # How long an Idempotency-Key's first answer is replayed (seconds); older keys are purged.
    "IDEMPOTENCY_TTL_SECONDS": 24 * 3600,
    # ---- operations ---------------------------------------------------------------------
    # Log lines of every process (API, gunicorn, worker, beat): "json" (one object a line,
    # with ts, level, logger, message and run_id / dataset_id / request_id where known; set
    # in deployment by .env.example) or "text" (for a terminal: `backprop up`).
    "LOG_FORMAT": "text",
    # The lowest level the API and gunicorn log (DEBUG, INFO, WARNING, ...); Celery's
    # processes take theirs from --loglevel.
    "LOG_LEVEL": "INFO",
    # GET /metrics: the queue-wait and epoch-duration distributions cover this many seconds
    # back (the runs first started, and the runs with a heartbeat, since then).
    "METRICS_WINDOW_SECONDS": 3600,
}


def setting(name: str) -> object:
    """One setting for a process that has no Flask app (gunicorn's config file): its
    BACKPROP_ variable parsed as create_app() parses it, or its default."""
    raw = os.environ.get(f"BACKPROP_{name}")
    if raw is None:
        return DEFAULTS[name]
    try:
        return json.loads(raw)
    except ValueError:
        return raw
