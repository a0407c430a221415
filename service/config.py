"""Every setting of the service, with its default, its type and its bounds, in one place.

A setting's type is its default's: int, float, bool or str; a default of None makes it an
optional string, unless TYPES names another type. CHECKS says what else a value must be
where another would break the service (seconds > 0, sizes >= 1, URLs that parse, ...).

`load()` starts from DEFAULTS, then reads the environment variables prefixed with
`BACKPROP_` (`BACKPROP_LEASE_SECONDS=30` sets LEASE_SECONDS; `BACKPROP_X_FILE=path` sets X to
that file's content, for secrets), then a test dict, and checks every value. A bad one ends
the process at start with one line naming the variable, its value and what is expected
(`SettingError`). An unknown `BACKPROP_` variable is logged as a warning naming the setting
it most resembles: it is not an error, so that a .env shared by hosts during an upgrade
(with a setting only the newer version knows) does not stop the older processes.

The defaults are the embedded ones: SQLite in WAL mode and kombu's filesystem broker under
`./var/`, so a newcomer needs no server.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import make_url

VAR_DIR = os.path.abspath(os.environ.get("BACKPROP_VAR_DIR", "var"))

DEFAULTS: dict[str, object] = {
    # Where runs, datasets and weights live. PostgreSQL in deployment:
    # postgresql+psycopg://user@host/db (the password: DATABASE_PASSWORD)
    "DATABASE_URL": f"sqlite:///{os.path.join(VAR_DIR, 'backprop.db')}",
    # The database's password, put into DATABASE_URL (which then has none), so that it is
    # written once: as a file, BACKPROP_DATABASE_PASSWORD_FILE=/run/secrets/db_password, the
    # file the postgres image reads as POSTGRES_PASSWORD_FILE (docker-compose.yml).
    "DATABASE_PASSWORD": None,
    # PostgreSQL: how long connecting may take, and TCP keepalives on every connection: a
    # connection to a dead server or over a cut network fails within about twice this
    # (seconds), in the API and the worker alike.
    "DATABASE_CONNECT_TIMEOUT_SECONDS": 10,
    "DATABASE_KEEPALIVE_SECONDS": 30,
    # PostgreSQL cancels a statement of the API (not the worker) running longer than this
    # (seconds; 0: no limit). Generous: the largest data set upload is one INSERT.
    "API_STATEMENT_TIMEOUT_SECONDS": 60.0,
    # Celery broker. "filesystem://" is kombu's serverless transport (embedded default);
    # redis://host:6379/0 in deployment.
    "BROKER_URL": "filesystem://",
    "BROKER_FOLDER": os.path.join(VAR_DIR, "broker"),
    # Redis over TLS (a rediss:// BROKER_URL): the server's certificate is always verified,
    # against this CA bundle (a PEM file; None: the system's CAs); the client presents this
    # certificate and key (PEM files) when the server asks for one (tls-auth-clients).
    "BROKER_SSL_CA_CERTS": None,
    "BROKER_SSL_CERTFILE": None,
    "BROKER_SSL_KEYFILE": None,
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
    # Wall-clock limit of one run (seconds); over it the run fails with code "timeout". A run
    # whose estimated time is over it is refused up front (422 at training.epochs). The
    # estimate (nn/budget.py) assumes a worker has a core of a current server CPU to itself,
    # with one BLAS thread: the AMD EPYC (Zen 5) of bench/BUDGET.md, 40 G float64
    # multiply-adds/s and 0.25 us per NumPy call, a little faster than measured there.
    "RUN_TIME_LIMIT_SECONDS": 3600,
    # Longest `GET /v1/runs/{id}?wait=` (seconds): a waiting request holds an API thread
    # (not a database connection) this long at most; more is a 422.
    "RUN_WAIT_MAX_SECONDS": 60,
    # How much a run may grow the address space of the process that trains it (bytes; 0: no
    # limit); past it the run fails with code "out_of_memory" and the worker lives
    # on (worker/memory.py). Above the run budget RUN_MAX_MEMORY_BYTES (2 GiB, estimated at
    # submit) by what the estimate leaves out: the data set, up to ~4x DATASET_MAX_BYTES
    # (its bytes from the database, the decoded arrays, the validation split and a shuffled
    # copy: 0.9 GiB for the largest), and the estimate's own error.
    "WORKER_MEMORY_LIMIT_BYTES": 4 * 1024**3,
    # Largest accepted request body (bytes).
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,
    # Largest memory a JSON body may take once parsed (bytes), estimated from its bytes before
    # parsing (service/params.py: about 72 per array or object, 120 per key, 32 per value):
    # Python's objects take 3 to 25 times the text, 1.6 GB for a 64 MB body of "[1],".
    # Over it: 413.
    "JSON_MAX_MEMORY_BYTES": 512 * 1024 * 1024,
    # Page size of list endpoints when ?limit= is not given, and its maximum.
    "PAGE_DEFAULT": 50,
    "PAGE_MAX": 1000,
    # Loaded models kept in memory by the predict endpoint (each API process has its own).
    "MODEL_CACHE_SIZE": 64,
    # Most input rows one POST /v1/runs/{id}/predict may send.
    "PREDICT_MAX_ROWS": 10_000,
    # The memory one prediction may take in the API process (bytes), estimated from the model
    # before anything is allocated: the samples are computed as many at a time as fit beside
    # the answer; a model whose one sample, or an answer that, would not fit is a 422 at
    # `inputs`.
    "PREDICT_MAX_MEMORY_BYTES": 256 * 1024 * 1024,
    # Rows a batch prediction (POST /v1/predictions) computes and stores at a time, at most
    # (fewer when making one chunk would take more than PREDICT_MAX_MEMORY_BYTES): the worker
    # and the API answering its result hold a few chunks, whatever the data set's size.
    "PREDICTION_CHUNK_ROWS": 10_000,
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
    # Largest estimated peak memory of a run in its worker (bytes): parameters, optimizer
    # slots, gradients, checkpoints, one batch's activations and caches (the whole training
    # split without batch_size), the data set as stored, decoded and copied (nn/budget.py).
    # Over it POST /v1/runs answers 422 naming the field to change. A worker's memory limit
    # (WORKER_MEMORY_LIMIT_BYTES) must be at least this plus a worker process's baseline.
    "RUN_MAX_MEMORY_BYTES": 2 * 1024**3,
    # Statistics epochs one run keeps per phase at most: every epoch up to a threshold, then
    # fewer and fewer (service/statstore.py); a run with no more epochs keeps them all.
    "RUN_MAX_STATS_EPOCHS": 2000,
    # Runs one tenant may have queued, running or cancelling at once; past it POST /v1/runs
    # answers 429 too_many_runs with Retry-After.
    "TENANT_MAX_ACTIVE_RUNS": 20,
    # Bytes one tenant may store: data sets, weights (initial, checkpoints, final, best) and
    # runs' rows, as GET /v1/usage counts them (service/usage.py). Past it, creating a data
    # set or a run answers 403 quota_exceeded; a run training meanwhile finishes. 0: no quota.
    "TENANT_MAX_STORED_BYTES": 10 * 1024**3,
    # Finished runs older than this (seconds since finished_at) are deleted, with their rows
    # and weights, by the reconciler, unless pinned (PATCH /v1/runs/{id}) or named by a
    # model alias; so are finished batch predictions, with their results. 0: kept until
    # deleted by hand.
    "RUN_RETENTION_SECONDS": 0,
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
    # ---- webhooks (service/webhooks.py, worker/webhooks.py) ----------------------------------
    # Webhook URLs that resolve to loopback, private, link-local (cloud metadata), shared or
    # reserved addresses are refused, at creation and again at each delivery (after DNS
    # resolution, connecting to the address checked). true: allowed (local setups, tests).
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS": False,
    # One delivery attempt's whole time: connecting, sending, and the answer's status line
    # (seconds); past it the attempt failed.
    "WEBHOOK_TIMEOUT_SECONDS": 5.0,
    # Retries after a failed attempt: the first after about this long (seconds), each next
    # one 4 times later, at most WEBHOOK_RETRY_MAX_SECONDS apart (each +-20% at random), until
    # WEBHOOK_RETRY_FOR_SECONDS after the event: then the delivery has failed.
    "WEBHOOK_RETRY_FIRST_SECONDS": 5.0,
    "WEBHOOK_RETRY_MAX_SECONDS": 4 * 3600.0,
    "WEBHOOK_RETRY_FOR_SECONDS": 24 * 3600.0,
    # An endpoint whose every attempt failed for this long (seconds) is disabled: it says so
    # (disabled_reason), is sent nothing more, and a PATCH enables it again.
    "WEBHOOK_DISABLE_AFTER_SECONDS": 24 * 3600.0,
    # How often beat sends the webhook dispatcher, which sends the deliveries that are due
    # (retries, and those whose message was lost) to the webhook worker (seconds).
    "WEBHOOK_DISPATCH_SECONDS": 2.0,
    # ---- operations ---------------------------------------------------------------------
    # Log lines of every process (API, gunicorn, worker, beat): "json" (one object a line,
    # with ts, level, logger, message and run_id / dataset_id / request_id where known; set
    # in deployment by .env.example) or "text" (for a terminal: `backprop up`).
    "LOG_FORMAT": "text",
    # The lowest level the API and gunicorn log (DEBUG, INFO, WARNING, ...); Celery's
    # processes take theirs from --loglevel.
    "LOG_LEVEL": "INFO",
    # GET /metrics answers on this port only (404 on any other), one the API's server also
    # listens on and that is not published: docker-compose.yml binds 9100 beside the public
    # 8000; `backprop up` binds it when set. None: on every port.
    "METRICS_PORT": None,
    # The worker's and beat's main loops touch this file every few seconds, for a health
    # check that needs no broker (docker-compose.yml; worker/health.py). None: no file.
    "HEARTBEAT_FILE": None,
    # GET /metrics: the queue-wait and epoch-duration distributions cover this many seconds
    # back (the runs first started, and the runs with a heartbeat, since then).
    "METRICS_WINDOW_SECONDS": 3600,
}


# A setting whose default is None and whose values are not strings: its type.
TYPES: dict[str, type] = {
    "METRICS_PORT": int,
}

# BACKPROP_ variables that are not settings, and are not reported as unknown.
OTHER_VARIABLES = {
    "VAR_DIR",  # read above, for the defaults of the embedded paths
    "TEST_PG", "TEST_REDIS", "FUZZ_EXAMPLES",  # the test suite's (tests/conftest.py, test_fuzz)
}

# Settings whose values are never printed (an error shows "(hidden)" instead).
SECRETS = {"ADMIN_KEY", "DATABASE_PASSWORD"}

PREFIX = "BACKPROP_"
ADMIN_KEY_MIN_CHARS = 32

log = logging.getLogger(__name__)


class SettingError(SystemExit):
    """A setting's value that the service cannot run with. A SystemExit, so that whatever
    started the process (gunicorn, Celery's command line, alembic, flask, `backprop`) ends
    it with this one line on stderr and status 1, not a traceback: each of them lets
    SystemExit through, and all of them print any other exception's traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"backprop: {message}")


# ---- what a value must be, beyond its type ---------------------------------------------------
# A check returns None when the value is right, else what was expected.
Check = Callable[[Any], "str | None"]
_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _above(low: float) -> Check:
    return lambda v: None if v > low else f"{_WORDS[type(v)]} > {low:g}"


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"{_WORDS[type(v)]} >= {low:g}"


def _between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"{_WORDS[type(v)]} from {low} to {high}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"one of {', '.join(choices)}"


def _database_url(value: str) -> str | None:
    try:
        make_url(value).get_dialect().import_dbapi()
    except Exception as e:  # unparsable, an unknown dialect, a driver not installed
        return ("a SQLAlchemy URL with an installed driver, e.g. "
                f"postgresql+psycopg://user@host:5432/db or sqlite:///path ({e})")
    return None


def _broker_url(value: str) -> str | None:
    from kombu.transport import resolve_transport
    from kombu.utils.url import parse_url

    try:
        resolve_transport(parse_url(value)["transport"])
    except Exception as e:  # an unknown transport, a port that is not a number
        why = e.args[0] if isinstance(e, KeyError) else e  # a KeyError's str() is quoted
        return ("a broker URL kombu knows, e.g. redis://host:6379/0, rediss://host:6380/0 or "
                f"filesystem:// ({why})")
    return None


def _readable(path: str) -> str | None:
    return None if os.access(path, os.R_OK) and os.path.isfile(path) else "a readable file"


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "a non-empty string"


_POSITIVE, _NATURAL, _COUNT = _above(0), _at_least(0), _at_least(1)

CHECKS: dict[str, Check] = {
    "DATABASE_URL": _database_url,
    "BROKER_URL": _broker_url,
    "QUEUE": _nonempty,
    **dict.fromkeys(("BROKER_SSL_CA_CERTS", "BROKER_SSL_CERTFILE", "BROKER_SSL_KEYFILE"),
                    _readable),
    # durations that must pass (0 would mean "never wait", "expire at once", "spin")
    **dict.fromkeys(("DATABASE_CONNECT_TIMEOUT_SECONDS", "DATABASE_KEEPALIVE_SECONDS",
                     "LEASE_SECONDS", "RECONCILE_SECONDS", "REQUEUE_AFTER_SECONDS",
                     "RUN_TIME_LIMIT_SECONDS", "RUN_WAIT_MAX_SECONDS", "IDEMPOTENCY_TTL_SECONDS",
                     "EVENTS_POLL_SECONDS", "EVENTS_KEEPALIVE_SECONDS",
                     "METRICS_WINDOW_SECONDS", "WEBHOOK_TIMEOUT_SECONDS",
                     "WEBHOOK_RETRY_FIRST_SECONDS", "WEBHOOK_RETRY_MAX_SECONDS",
                     "WEBHOOK_RETRY_FOR_SECONDS", "WEBHOOK_DISABLE_AFTER_SECONDS",
                     "WEBHOOK_DISPATCH_SECONDS"), _POSITIVE),
    # 0 means "each epoch", "no limit" or "no cache"
    **dict.fromkeys(("FLUSH_SECONDS", "CHECKPOINT_SECONDS", "API_STATEMENT_TIMEOUT_SECONDS",
                     "API_KEY_CACHE_SECONDS", "MODEL_CACHE_SIZE", "WORKER_MEMORY_LIMIT_BYTES",
                     "TENANT_MAX_STORED_BYTES", "RUN_RETENTION_SECONDS"), _NATURAL),
    # sizes and counts
    **dict.fromkeys(("MAX_ATTEMPTS", "MAX_CONTENT_LENGTH", "PAGE_DEFAULT", "PAGE_MAX",
                     "PREDICT_MAX_ROWS", "DATASET_MAX_BYTES", "DATASET_MAX_ROWS",
                     "DATASET_MAX_FEATURES", "RUN_MAX_LAYERS", "RUN_MAX_UNITS",
                     "RUN_MAX_PARAMS", "RUN_MAX_EPOCHS", "RUN_MAX_MEMORY_BYTES",
                     "TENANT_MAX_ACTIVE_RUNS", "JSON_MAX_MEMORY_BYTES",
                     "PREDICT_MAX_MEMORY_BYTES", "PREDICTION_CHUNK_ROWS", "RUN_MAX_STATS_EPOCHS",
                     "TENANT_MAX_EVENT_STREAMS"), _COUNT),
    "ADMIN_KEY": lambda v: None if len(v) >= ADMIN_KEY_MIN_CHARS else (
        f"at least {ADMIN_KEY_MIN_CHARS} characters, e.g. from `openssl rand -hex 32`"),
    "METRICS_PORT": _between(1, 65535),
    "LOG_FORMAT": _one_of("text", "json"),
    "LOG_LEVEL": _one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
}

# What settings must be together: (names, test of their values, what is expected).
RELATIONS: list[tuple[tuple[str, ...], Callable[..., bool], str]] = [
    (("FLUSH_SECONDS", "LEASE_SECONDS"), lambda flush, lease: flush < lease,
     "FLUSH_SECONDS < LEASE_SECONDS (a worker renews its lease when it flushes)"),
    (("PAGE_DEFAULT", "PAGE_MAX"), lambda default, most: default <= most,
     "PAGE_DEFAULT <= PAGE_MAX"),
    (("WEBHOOK_RETRY_FIRST_SECONDS", "WEBHOOK_RETRY_MAX_SECONDS"),
     lambda first, most: first <= most,
     "WEBHOOK_RETRY_FIRST_SECONDS <= WEBHOOK_RETRY_MAX_SECONDS"),
    (("BROKER_URL", "BROKER_SSL_CA_CERTS", "BROKER_SSL_CERTFILE", "BROKER_SSL_KEYFILE"),
     lambda url, *files: url.startswith("rediss://") or files == (None, None, None),
     "a rediss:// BROKER_URL with the BROKER_SSL_ files (redis:// is not encrypted)"),
]


# ---- reading them ---------------------------------------------------------------------------

def load(overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every setting: DEFAULTS, then `environ`'s BACKPROP_ variables, then `overrides` (a test
    dict, which may also hold Flask's own keys such as TESTING), each of the right type and
    checked. Raises SettingError; logs a warning for each unknown BACKPROP_ variable."""
    from flask import Flask

    values: dict[str, Any] = dict(DEFAULTS)
    labels: dict[str, str] = {}  # where each value that is not the default came from
    for var in sorted(environ):
        if not var.startswith(PREFIX):
            continue
        name = var.removeprefix(PREFIX)
        if name in DEFAULTS:
            if f"{var}_FILE" in environ:
                raise SettingError(f"{var} and {var}_FILE are both set: give one of them")
            labels[name] = f"{var}={_shown(name, environ[var])}"
            values[name] = _typed(name, environ[var], labels[name])
        elif name.endswith("_FILE") and name.removesuffix("_FILE") in DEFAULTS:
            name = name.removesuffix("_FILE")
            labels[name] = f"{var}={environ[var]} (its content)"
            values[name] = _typed(name, _read(var, environ[var]), labels[name])
        elif name not in OTHER_VARIABLES:
            log.warning("%s is not a setting of the service%s; it is ignored", var,
                        _did_you_mean(name, PREFIX))
    for name, value in (overrides or {}).items():
        if name in DEFAULTS:
            labels[name] = f"{name}={_shown(name, value)} (test config)"
            values[name] = _typed(name, value, labels[name])
        elif name in Flask.default_config:
            values[name] = value
        else:
            raise SettingError(f"{name} (test config) is not a setting{_did_you_mean(name)}")
    for name, check in CHECKS.items():
        expected = None if values[name] is None else check(values[name])
        if expected is not None:
            raise SettingError(f"{_label(name, labels, values)}: expected {expected}")
    for names, holds, expected in RELATIONS:
        if not holds(*(values[n] for n in names)):
            given = " and ".join(_label(n, labels, values) for n in names)
            raise SettingError(f"{given}: expected {expected}")
    if values["DATABASE_PASSWORD"] is not None:
        url = make_url(values["DATABASE_URL"])
        if url.password is not None:
            raise SettingError(f"{_label('DATABASE_URL', labels, values)} has a password and "
                               f"{_label('DATABASE_PASSWORD', labels, values)} another: give "
                               "it once")
        values["DATABASE_URL"] = url.set(password=values["DATABASE_PASSWORD"]).render_as_string(
            hide_password=False)
    return values


def _typed(name: str, value: object, label: str) -> Any:
    """`value` (an environment variable's text, or a test dict's value) as the setting's
    type; SettingError when it is not one."""
    default = DEFAULTS[name]
    kind = type(default) if default is not None else TYPES.get(name, str)
    if default is None and (value is None or value == ""):
        return None
    try:
        return _parse(kind, value)
    except (ValueError, OverflowError):
        raise SettingError(f"{label}: expected {_WORDS[kind]}"
                           f"{' (or empty: unset)' if default is None else ''}") from None


_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


def _parse(kind: type, value: object) -> object:
    if kind is str:
        if isinstance(value, str):
            return value
    elif kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
    elif not isinstance(value, bool):  # a number (True is an int to Python, not to us)
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text)
            except ValueError:
                value = float(text)
        if isinstance(value, int):
            return kind(value)
        if isinstance(value, float) and math.isfinite(value):
            if kind is float:
                return value
            if value.is_integer():  # 1e12 for an integer setting
                return int(value)
    raise ValueError(value)


def _read(var: str, path: str) -> str:
    """A BACKPROP_X_FILE's content, without the trailing newline an editor or `echo` adds
    (as the postgres image reads its POSTGRES_PASSWORD_FILE)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingError(f"{var}={path}: cannot read it ({e})") from None


def _shown(name: str, value: object) -> str:
    """A value as an error may print it: never a secret, nor a URL's password."""
    if name in SECRETS and value not in (None, ""):
        return "(hidden)"
    return repr(re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", value) if isinstance(value, str)
                else value)


def _label(name: str, labels: dict[str, str], values: dict[str, Any]) -> str:
    return labels.get(name) or f"{name}={_shown(name, values[name])} (the default)"


def _did_you_mean(name: str, prefix: str = "") -> str:
    known = [*DEFAULTS, *(f"{n}_FILE" for n in DEFAULTS), *OTHER_VARIABLES]
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
