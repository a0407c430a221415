"""Webhook events from the worker's status changes, and their delivery to a real HTTP receiver
on loopback: signed, retried with the same webhook-id, never redirected, given up, the
endpoint disabled; the dispatcher. (Real processes, a worker killed mid-delivery:
tests/e2e/test_webhooks.py.)"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from service import db
from service.models import Webhook, WebhookAttempt, WebhookDelivery, utcnow
from service.serialize import run_json
from service.webhooks import emit, new_secret, rotate
from tests.receiver import Drip, Receiver, Redirect, Slow, verify
from tests.worker.rows import get_run, set_run, tenant
from worker import lease, reconcile
from worker.training import train_run
from worker.webhooks import deliver

pytestmark = pytest.mark.usefixtures("app")  # every test runs in the app's context


@pytest.fixture
def config() -> dict[str, Any]:
    return {"FLUSH_SECONDS": 0.05, "CHECKPOINT_SECONDS": 0.2,
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": True, "WEBHOOK_RETRY_FIRST_SECONDS": 0.05,
            "WEBHOOK_TIMEOUT_SECONDS": 2.0}


def add_webhook(url: str, events: tuple[str, ...] = ("*",), **columns: Any) -> Webhook:
    hook = Webhook(tenant_id=tenant(), url=url, events=list(events), secret=new_secret(),
                   created_at=utcnow(), **columns)
    with db.session_scope() as session:
        session.add(hook)
    return hook


def deliveries(hook_id: str) -> list[WebhookDelivery]:
    with db.session_scope() as session:
        return list(session.scalars(sa.select(WebhookDelivery).where(
            WebhookDelivery.webhook_id == hook_id).order_by(WebhookDelivery.created_at)))


def attempts(delivery_id: str) -> list[WebhookAttempt]:
    with db.session_scope() as session:
        return list(session.scalars(sa.select(WebhookAttempt).where(
            WebhookAttempt.delivery_id == delivery_id).order_by(WebhookAttempt.attempt)))


def emitted(hook: Webhook, type: str = "run.succeeded") -> str:
    """A delivery of a made-up event to `hook`: its id."""
    with db.session_scope() as session:
        (delivery_id,) = emit(session, hook.tenant_id, type, {"id": "r1", "status": "x"})
    return delivery_id


def make_due(delivery_id: str) -> None:
    with db.session_scope() as session:
        session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                        .values(next_attempt_at=utcnow()))


def test_a_trained_run_is_delivered_started_and_succeeded_signed(
    make_run: Callable[..., str], receiver: Receiver,
) -> None:
    """The claim records run.started, the end run.succeeded, each in its own transaction
    and with the run's JSON then; each is POSTed once, verifiable with the secret."""
    hook = add_webhook(receiver.url)
    quiet = add_webhook(receiver.url.replace("/hook", "/other"), ("run.failed",))
    run_id = make_run()
    assert train_run(run_id) == "succeeded"
    sent = deliveries(hook.id)
    assert [d.event_type for d in sent] == ["run.started", "run.succeeded"]
    assert deliveries(quiet.id) == []
    for delivery in sent:
        assert deliver(delivery.id) == "succeeded"
        assert deliver(delivery.id) == "dropped"  # a duplicate message does nothing
    first, second = receiver.wait(2)
    assert len(receiver.requests) == 2
    started, succeeded = verify(first, hook.secret), verify(second, hook.secret)
    assert (started["type"], started["data"]["status"]) == ("run.started", "running")
    assert started["data"]["id"] == run_id and started["data"]["attempts"] == 1
    assert succeeded["type"] == "run.succeeded"
    assert succeeded["data"] == run_json(get_run(run_id))
    assert [r.headers["webhook-id"] for r in (first, second)] == [d.event_id for d in sent]
    assert first.headers["Content-Type"] == "application/json"
    with pytest.raises(Exception, match="signature"):
        verify(first, new_secret())
    log = attempts(sent[0].id)
    assert [(a.attempt, a.status_code, a.error, a.next_attempt_at) for a in log] == \
        [(1, 200, None, None)]
    assert deliveries(hook.id)[0].status == "succeeded"


def test_a_failing_receiver_that_recovers_gets_the_same_event_again(
    app: Flask, receiver: Receiver,
) -> None:
    """500, then no answer in time, then 200: three attempts with one webhook-id and body,
    each a new timestamp and signature; the log says what each got and when the next was
    due: the first retry about WEBHOOK_RETRY_FIRST_SECONDS after the failure, the next 4
    times that."""
    app.config.update(WEBHOOK_TIMEOUT_SECONDS=0.5, WEBHOOK_RETRY_FIRST_SECONDS=1.0)
    receiver.answers = [500, Slow(1.5), 200]
    hook = add_webhook(receiver.url)
    delivery_id = emitted(hook)
    assert deliver(delivery_id) == "retrying"
    assert deliver(delivery_id) == "dropped"  # not due yet
    make_due(delivery_id)
    assert deliver(delivery_id) == "retrying"
    with db.session_scope() as session:
        assert session.get(Webhook, hook.id).failing_since is not None
    make_due(delivery_id)
    assert deliver(delivery_id) == "succeeded"
    got = receiver.wait(3)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert len({r.body for r in got}) == 1
    for request in got:
        verify(request, hook.secret)
    log = attempts(delivery_id)
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, None), (3, 200)]
    assert log[0].error == "HTTP 500: receiver says no"
    assert log[1].error == "no answer within 0.5 s"
    assert log[2].error is None and log[2].next_attempt_at is None
    # after each failed attempt's end: 1 s, then 4 s, +-20%
    gaps = [(a.next_attempt_at - a.started_at).total_seconds() - a.duration_s for a in log[:2]]
    assert 0.8 <= gaps[0] <= 1.3 and 3.2 <= gaps[1] <= 4.9, gaps
    with db.session_scope() as session:
        assert session.get(Webhook, hook.id).failing_since is None  # it succeeded since


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.answers = [Redirect(receiver.url.replace("/hook", "/elsewhere"))]
    delivery_id = emitted(add_webhook(receiver.url))
    assert deliver(delivery_id) == "retrying"
    assert [r.path for r in receiver.requests] == ["/hook"]
    (attempt,) = attempts(delivery_id)
    assert attempt.status_code == 302 and "not followed" in attempt.error


def test_an_answer_that_trickles_in_is_cut_at_the_timeout(
    app: Flask, receiver: Receiver,
) -> None:
    """The timeout bounds the whole attempt, not each read: a status line sent a byte at a
    time (each well within the timeout) fails."""
    app.config.update(WEBHOOK_TIMEOUT_SECONDS=0.5)
    receiver.answers = [Drip(0.1)]
    delivery_id = emitted(add_webhook(receiver.url))
    assert deliver(delivery_id) == "retrying"
    (attempt,) = attempts(delivery_id)
    assert attempt.error == "no answer within 0.5 s"


def test_a_private_address_is_refused_at_delivery_too(app: Flask, receiver: Receiver) -> None:
    """A webhook made while private networks were allowed (or whose name now resolves to a
    private address) is not called once they are not."""
    delivery_id = emitted(add_webhook(receiver.url))
    app.config["WEBHOOK_ALLOW_PRIVATE_NETWORKS"] = False
    assert deliver(delivery_id) == "retrying"
    (attempt,) = attempts(delivery_id)
    assert attempt.status_code is None and "127.0.0.1" in attempt.error \
        and "refused" in attempt.error
    assert receiver.requests == []


def test_the_request_goes_to_the_address_checked_with_the_hosts_name(
    receiver: Receiver,
) -> None:
    """The name is resolved once, checked, and that address connected to (a DNS answer that
    changes afterwards cannot redirect the request); the Host header keeps the name."""
    port = int(receiver.url.split(":")[2].split("/")[0])
    looked_up = []

    def resolve(host: str, port_: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port_))]

    delivery_id = emitted(add_webhook(f"http://receiver.test:{port}/hook?x=1"))
    assert deliver(delivery_id, resolve=resolve) == "succeeded"
    (request,) = receiver.wait(1)
    assert looked_up == ["receiver.test"]
    assert request.headers["Host"] == f"receiver.test:{port}" and request.path == "/hook?x=1"


def test_both_secrets_sign_during_a_rotations_grace_period(receiver: Receiver) -> None:
    hook = add_webhook(receiver.url)
    old = hook.secret
    with db.session_scope() as session:
        row = session.get(Webhook, hook.id)
        new = rotate(row, 3600, utcnow())
    assert deliver(emitted(hook)) == "succeeded"
    (request,) = receiver.wait(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verify(request, old)
    verify(request, new)


def test_a_delivery_is_given_up_after_the_retry_period(app: Flask, receiver: Receiver) -> None:
    app.config.update(WEBHOOK_RETRY_FOR_SECONDS=0.5, WEBHOOK_RETRY_FIRST_SECONDS=0.3)
    receiver.default = 503
    hook = add_webhook(receiver.url)
    delivery_id = emitted(hook)
    assert deliver(delivery_id) == "retrying"  # 0.3 s (+-20%) is within 0.5 s of the event
    make_due(delivery_id)
    assert deliver(delivery_id) == "failed"  # 1.2 s more is not
    (delivery,) = deliveries(hook.id)
    assert (delivery.status, delivery.next_attempt_at) == ("failed", None)
    assert [a.status_code for a in attempts(delivery_id)] == [503, 503]
    assert attempts(delivery_id)[-1].next_attempt_at is None


def test_an_endpoint_failing_long_enough_is_disabled(app: Flask, receiver: Receiver) -> None:
    """Failing for WEBHOOK_DISABLE_AFTER_SECONDS: disabled with the reason and the last
    error; its other pending deliveries fail; new events are not recorded for it."""
    receiver.default = 500
    hook = add_webhook(receiver.url, failing_since=utcnow() - timedelta(hours=25))
    first, second = emitted(hook), emitted(hook)
    assert deliver(first) == "failed"
    with db.session_scope() as session:
        row = session.get(Webhook, hook.id)
        assert row.disabled_at is not None
        assert "HTTP 500: receiver says no" in row.disabled_reason
        assert '{"disabled": false}' in row.disabled_reason
    assert {d.id: d.status for d in deliveries(hook.id)} == {first: "failed", second: "failed"}
    assert deliver(second) == "dropped"
    with db.session_scope() as session:
        assert emit(session, hook.tenant_id, "run.failed", {}) == []


def test_status_changes_record_events_only_when_they_commit(
    make_run: Callable[..., str], receiver: Receiver,
) -> None:
    """A run's first claim records run.started, a claim after a hand-back does not; the
    reconciler's settling records run.failed (worker_lost) and run.cancelled; a release
    whose lease was lost records nothing (its transaction rolls back)."""
    hook = add_webhook(receiver.url)
    cfg = {"lease_seconds": 30, "max_attempts": 2, "worker": "w"}
    run_id = make_run()
    with db.session_scope() as session:
        token = lease.claim(session, run_id, now=utcnow(), **cfg)
    with db.session_scope() as session:
        lease.hand_back(session, run_id, token)
    with db.session_scope() as session:
        token = lease.claim(session, run_id, now=utcnow(), **cfg)
    assert [d.event_type for d in deliveries(hook.id)] == ["run.started"]
    with pytest.raises(lease.LeaseLost), db.session_scope() as session:
        lease.release(session, run_id, "not-the-token", now=utcnow(), status="succeeded")
    assert len(deliveries(hook.id)) == 1

    lost, cancelling = make_run(), make_run()
    expired = utcnow() - timedelta(seconds=1)
    set_run(lost, status="running", attempts=2, lease_expires_at=expired, lease_token="t")
    set_run(cancelling, status="cancelling", attempts=1, lease_expires_at=expired,
            lease_token="t")
    with db.session_scope() as session:
        assert lease.settle_abandoned(session, now=utcnow(), max_attempts=2) == 2
    events = {json.loads(d.body)["data"]["id"]: d.event_type for d in deliveries(hook.id)}
    assert events[lost] == "run.failed" and events[cancelling] == "run.cancelled"
    assert json.loads(deliveries(hook.id)[-1].body)["data"]["status"] in ("failed", "cancelled")


def test_the_dispatcher_sends_what_is_due_and_has_no_message(app: Flask) -> None:
    """A new delivery's message went out at its commit: not sent again before
    REQUEUE_AFTER_SECONDS. A retry whose time came, and an attempt whose worker died (its
    claim expired), are sent at the next pass; finished deliveries are purged after
    DELIVERY_LOG_DAYS."""
    hook = add_webhook("http://127.0.0.1:9/hook")
    fresh, retry, died, old = (emitted(hook) for _ in range(4))
    now = utcnow()
    with db.session_scope() as session:
        def set_(ident: str, **values: Any) -> None:
            session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == ident)
                            .values(**values))
        set_(retry, published_at=None, attempts=1, next_attempt_at=now)
        set_(died, published_at=None, attempts=1, locked_until=now - timedelta(seconds=1))
        set_(old, status="succeeded", finished_at=now - timedelta(days=31))
    assert reconcile.dispatch_deliveries() == {"sent": 2, "purged": 1}
    assert reconcile.dispatch_deliveries() == {"sent": 0, "purged": 0}
    assert {d.id for d in deliveries(hook.id)} == {fresh, retry, died}
    with db.session_scope() as session:
        session.execute(sa.update(WebhookDelivery).values(
            published_at=now - timedelta(seconds=app.config["REQUEUE_AFTER_SECONDS"] + 1)))
    assert reconcile.dispatch_deliveries()["sent"] == 3


def test_an_attempt_whose_worker_died_is_made_again_with_the_same_id(
    app: Flask, receiver: Receiver,
) -> None:
    """The claim of an attempt that never recorded its result (its worker killed) expires;
    the next attempt sends the same event, and the dead attempt's late result, if it ever
    came, would be dropped (fenced by the attempt count)."""
    hook = add_webhook(receiver.url)
    delivery_id = emitted(hook)
    from worker import webhooks as module

    with db.session_scope() as session:  # attempt 1 claims, then its worker dies
        claimed = module._claim(session, delivery_id, utcnow(), 60)
    assert claimed is not None and claimed.attempt == 1
    assert deliver(delivery_id) == "dropped"  # still claimed
    with db.session_scope() as session:
        session.execute(sa.update(WebhookDelivery).values(
            locked_until=utcnow() - timedelta(seconds=1)))
    assert deliver(delivery_id) == "succeeded"
    with db.session_scope() as session:
        late = module._record(session, delivery_id, claimed, module.Answer(500, "late"),
                              utcnow(), 1.0)
    assert late == "superseded"
    (request,) = receiver.wait(1)
    assert request.headers["webhook-id"] == deliveries(hook.id)[0].event_id
    assert [(a.attempt, a.status_code) for a in attempts(delivery_id)] == [(2, 200)]
