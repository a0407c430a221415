"""publish_run and the reconciler, against a real broker: kombu's filesystem one and Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import current_app

from service.models import utcnow
from service.queue import TRAIN_TASK, celery_init_app, publish_run
from tests.conftest import REDIS_URL
from tests.worker.rows import get_run, in_context
from worker.reconcile import reconcile
from worker.training import train_run

AGO = timedelta(minutes=5)


@pytest.fixture(params=["filesystem", "redis"])
def broker_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "filesystem":
        return {"BROKER_URL": "filesystem://", "BROKER_FOLDER": str(tmp_path / "broker")}
    return {"BROKER_URL": REDIS_URL, "BROKER_KEYPREFIX": request.getfixturevalue("redis_prefix")}


def sent() -> list[str]:
    """The run ids of the training messages waiting in the queue (consumed)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    celery = app.extensions.get("celery") or celery_init_app(app)
    ids = []
    with celery.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.config["QUEUE"], no_ack=True)
        while True:
            try:
                message = queue.get_nowait()
            except queue.Empty:
                break
            assert message.headers["task"] == TRAIN_TASK
            args, _kwargs, _embed = message.decode()
            ids.append(args[0])
        queue.close()
    return ids


def test_publish_run_sends_the_message_and_records_when(make_run: Callable[..., str]) -> None:
    run_id = make_run()
    publish_run(run_id)
    assert sent() == [run_id]
    assert get_run(run_id).published_at is not None


def test_queued_runs_whose_message_is_old_or_missing_are_republished_once(
    make_run: Callable[..., str],
) -> None:
    now = utcnow()
    old = make_run(published_at=now - AGO)
    never = make_run(created_at=now - AGO)  # the API died before publishing
    fresh = make_run(published_at=now)
    assert reconcile()["republished"] == 2
    assert sorted(sent()) == sorted([old, never])
    assert get_run(old).published_at > now
    assert reconcile()["republished"] == 0 and sent() == []
    assert get_run(fresh).status == "queued"


def test_abandoned_runs_are_republished_once_per_expiry(make_run: Callable[..., str]) -> None:
    now = utcnow()
    dead = make_run(status="running", attempts=1, lease_token="a", published_at=now - AGO,
                    lease_expires_at=now - timedelta(seconds=1))
    make_run(status="running", attempts=1, lease_token="b", published_at=now - AGO,
             lease_expires_at=now + timedelta(seconds=30))  # alive: left alone
    assert reconcile()["republished"] == 1
    assert sent() == [dead]
    assert reconcile()["republished"] == 0  # until REQUEUE_AFTER_SECONDS pass again


def test_runs_that_must_not_run_again_are_settled(make_run: Callable[..., str]) -> None:
    expired = utcnow() - timedelta(seconds=1)
    cancelling = make_run(status="cancelling", cancel_requested=True, attempts=1,
                          lease_token="a", lease_expires_at=expired)
    exhausted = make_run(status="running", attempts=3, lease_token="b",
                         lease_expires_at=expired)
    swept = reconcile()
    assert (swept["settled"], swept["republished"], swept["deleted"]) == (2, 0, 0)
    assert get_run(cancelling).status == "cancelled"
    assert (get_run(exhausted).status, get_run(exhausted).error_code) == ("failed", "worker_lost")
    assert sent() == []


def test_concurrent_reconcilers_publish_each_run_once(make_run: Callable[..., str]) -> None:
    runs = [make_run(published_at=utcnow() - AGO) for _ in range(5)]
    threads = [threading.Thread(target=in_context(reconcile)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sent()) == sorted(runs)


def test_the_republished_message_resumes_the_run(make_run: Callable[..., str]) -> None:
    run_id = make_run(status="running", attempts=1, lease_token="dead", epochs_completed=0,
                      started_at=utcnow(), published_at=utcnow() - AGO,
                      lease_expires_at=utcnow() - timedelta(seconds=1))
    reconcile()
    (message,) = sent()
    assert train_run(message) == "succeeded"
    assert get_run(run_id).attempts == 2
