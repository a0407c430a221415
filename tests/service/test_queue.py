"""service.queue: the Celery settings the design fixes, and the readiness probe."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service import create_app, queue
from service.queue import (
    DISPATCH_TASK,
    RECONCILE_TASK,
    broker_ok,
    celery_config,
    celery_init_app,
)
from tests.conftest import REDIS_URL, free_port
from tests.servers import Certs, Server, make_certs


def _config(**overrides: Any) -> dict[str, Any]:
    return {**create_app().config, **overrides}


def test_the_settings_the_design_fixes() -> None:
    conf = celery_config(_config(BROKER_URL=REDIS_URL, RUN_TIME_LIMIT_SECONDS=3600,
                                 BROKER_KEYPREFIX="p:", QUEUE="q", RECONCILE_SECONDS=15,
                                 WEBHOOK_DISPATCH_SECONDS=2.0))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["task_ignore_result"]
    assert 3600 < conf["task_soft_time_limit"] < conf["task_time_limit"]
    options = conf["broker_transport_options"]
    assert options["global_keyprefix"] == "p:"
    assert options["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_default_queue"] == "q"
    entry, webhooks = conf["beat_schedule"].values()
    assert entry["task"] == RECONCILE_TASK and entry["schedule"] == 15
    # the webhook dispatcher goes to the webhook worker, never behind a training run
    assert webhooks["task"] == DISPATCH_TASK and webhooks["schedule"] == 2.0
    assert webhooks["options"]["queue"] == "q.webhooks"


def test_the_filesystem_broker_keeps_its_folders_under_broker_folder(tmp_path) -> None:
    options = celery_config(_config(BROKER_URL="filesystem://",
                                    BROKER_FOLDER=str(tmp_path)))["broker_transport_options"]
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        assert options[key].startswith(str(tmp_path))
        assert (tmp_path / options[key]).is_dir()


def _ready(app: Flask) -> bool:
    celery_init_app(app)
    with app.app_context():
        return broker_ok()


def test_broker_ok(tmp_path) -> None:
    assert _ready(create_app({"BROKER_URL": "filesystem://", "BROKER_FOLDER": str(tmp_path)}))
    assert _ready(create_app({"BROKER_URL": REDIS_URL}))
    closed = f"redis://127.0.0.1:{free_port()}/0"
    assert not _ready(create_app({"BROKER_URL": closed}))


def test_a_rediss_broker_verifies_the_server_and_shows_its_certificate(
        tls_redis: Server, certs: Certs, tmp_path: Path) -> None:
    """A Redis on TLS alone, asking for a client certificate: ready with the CA that signed
    its certificate and a client certificate; not with another CA, the system's CAs (kombu
    alone would not verify at all) or no client certificate."""
    url = f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0"
    client = {"BROKER_SSL_CERTFILE": str(certs.client), "BROKER_SSL_KEYFILE": str(certs.client_key)}
    assert _ready(create_app({"BROKER_URL": url, "BROKER_SSL_CA_CERTS": str(certs.ca), **client}))
    other = make_certs(tmp_path)
    assert not _ready(create_app({"BROKER_URL": url, "BROKER_SSL_CA_CERTS": str(other.ca),
                                  **client}))
    assert not _ready(create_app({"BROKER_URL": url, **client}))
    assert not _ready(create_app({"BROKER_URL": url, "BROKER_SSL_CA_CERTS": str(certs.ca)}))
    assert celery_config(_config(BROKER_URL=REDIS_URL))["broker_use_ssl"] is False


def test_one_celery_app_however_many_threads_ask_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's threads publish at once: they share one Celery app (and its connections)."""
    app = create_app({"BROKER_URL": REDIS_URL})
    made = []

    def slow_init(flask_app: Flask) -> Any:
        time.sleep(0.05)  # long enough for every thread to ask before the first one is done
        made.append(celery_init_app(flask_app))
        return made[-1]

    monkeypatch.setattr(queue, "celery_init_app", slow_init)
    start = threading.Barrier(8)

    def ask(_: int) -> Any:
        start.wait()
        return queue._celery(app)

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(ask, range(8))) == set(made) and len(made) == 1


def test_prepare_needs_no_broker() -> None:
    """service/wsgi.py prepares the API process's broker client before it serves; it only
    imports and builds, so a broker that is down at start does not stop the API."""
    app = create_app({"BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens
    queue.prepare(app)
    assert app.extensions["celery"] is queue._celery(app)
