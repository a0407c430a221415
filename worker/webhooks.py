"""Deliver a webhook event: claim the delivery, POST it signed, record the answer, retry.

The delivery row is the truth (service/webhooks.py writes it with the event); a message only
says "try it now". An attempt claims the delivery with one compare-and-set (pending, due,
not claimed by an attempt in flight), which also counts the attempt; its result is recorded
only while that count is still its own (a fence), so a duplicate message does nothing and a
worker killed mid-attempt leaves a claim that expires after LOCK_TIMEOUTS x
WEBHOOK_TIMEOUT_SECONDS, when the dispatcher sends the delivery again, with the same body
and `webhook-id`. At least once: a receiver that answered but whose answer was lost is sent
the event again, and tells by the `webhook-id`.

An attempt succeeded when the endpoint answered 2xx within WEBHOOK_TIMEOUT_SECONDS (all of
it: connecting, TLS, sending, the answer's status line). Redirects are not followed (a 3xx
is a failure naming its Location). A failed attempt is retried after
WEBHOOK_RETRY_FIRST_SECONDS, then 4 times longer each time up to WEBHOOK_RETRY_MAX_SECONDS
(+-20% at random, so that the deliveries of an endpoint that was down do not all come back
at once), while the next try is within WEBHOOK_RETRY_FOR_SECONDS of the event; then the
delivery has failed. An endpoint whose attempts all failed for WEBHOOK_DISABLE_AFTER_SECONDS
is disabled (its pending deliveries fail with it) until a PATCH enables it.
"""

from __future__ import annotations

import http.client
import logging
import random
import socket
import ssl
import threading
from datetime import datetime, timedelta
from time import monotonic
from typing import NamedTuple

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from service.db import session_scope
from service.models import Webhook, WebhookAttempt, WebhookDelivery, utcnow
from service.serialize import timestamp
from service.webhooks import (
    Refused,
    Resolver,
    Target,
    check_url,
    disable,
    signed_headers,
    signing_secrets,
)
from worker.lease import NO_SYNC, at

log = logging.getLogger(__name__)

# A claimed attempt is presumed dead after this many WEBHOOK_TIMEOUT_SECONDS (resolving the
# host is not bounded by the timeout, so some room beyond it).
LOCK_TIMEOUTS = 3
BACKOFF_FACTOR = 4
JITTER = 0.2
# The most of an error answer's body kept in the delivery log (bytes).
BODY_SHOWN = 200
USER_AGENT = "backprop-service-webhooks/1"


class Answer(NamedTuple):
    """What one attempt got: the HTTP status (None when there was no answer) and an error
    (None when it succeeded)."""

    status_code: int | None
    error: str | None


class Claimed(NamedTuple):
    attempt: int
    event_id: str
    body: str
    url: str
    secrets: list[str]
    disabled: bool


def deliver(delivery_id: str, resolve: Resolver = socket.getaddrinfo) -> str:
    """One attempt at the delivery, in the app context: "succeeded", "retrying", "failed"
    (given up, or the endpoint disabled), or "dropped" (not due or not pending: a
    duplicate message) or "superseded" (its claim expired and another attempt took over,
    or the webhook was deleted meanwhile). `resolve` looks hosts up (tests give their own)."""
    cfg = current_app.config
    timeout = float(cfg["WEBHOOK_TIMEOUT_SECONDS"])
    with session_scope() as session:
        claimed = _claim(session, delivery_id, utcnow(), LOCK_TIMEOUTS * timeout)
    if claimed is None:
        log.info("webhook delivery %s: not due (a duplicate message); dropped", delivery_id)
        return "dropped"
    started, clock = utcnow(), monotonic()
    if claimed.disabled:
        answer = Answer(None, "the endpoint is disabled")
    else:
        try:
            target = check_url(claimed.url, allow_private=cfg["WEBHOOK_ALLOW_PRIVATE_NETWORKS"],
                               resolve=resolve)
            headers = signed_headers(claimed.secrets, claimed.event_id, started, claimed.body)
            answer = post(target, headers, claimed.body.encode(), timeout)
        except Refused as exc:
            answer = Answer(None, f"the URL was refused: {exc}")
    with session_scope() as session:
        outcome = _record(session, delivery_id, claimed, answer, started, monotonic() - clock)
    log.info("webhook delivery %s (attempt %d): %s%s", delivery_id, claimed.attempt, outcome,
             f" ({answer.error})" if answer.error else "")
    return outcome


def _claim(session: Session, delivery_id: str, now: datetime,
           lock_seconds: float) -> Claimed | None:
    """Take a due delivery for one attempt (counted), or None."""
    done = session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
               WebhookDelivery.next_attempt_at <= at(now),
               sa.or_(WebhookDelivery.locked_until.is_(None),
                      WebhookDelivery.locked_until < at(now)))
        .values(attempts=WebhookDelivery.attempts + 1, published_at=None,
                locked_until=now + timedelta(seconds=lock_seconds)),
        execution_options=NO_SYNC,
    )
    if done.rowcount != 1:
        return None
    delivery = session.get(WebhookDelivery, delivery_id)
    hook = session.get(Webhook, delivery.webhook_id) if delivery is not None else None
    if delivery is None or hook is None:
        return None
    return Claimed(delivery.attempts, delivery.event_id, delivery.body, hook.url,
                   signing_secrets(hook, now), hook.disabled_at is not None)


def _record(session: Session, delivery_id: str, claimed: Claimed, answer: Answer,
            started: datetime, duration: float) -> str:
    """The attempt's row and what follows from it, fenced by the attempt count."""
    cfg = current_app.config
    now = utcnow()
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.attempts != claimed.attempt or delivery.status != "pending":
        return "superseded"
    hook = session.get(Webhook, delivery.webhook_id)
    assert hook is not None  # the delivery is deleted with it
    next_at = None
    if answer.error is None:
        outcome = "succeeded"
        hook.failing_since = None
    else:
        delay = backoff(claimed.attempt, float(cfg["WEBHOOK_RETRY_FIRST_SECONDS"]),
                        float(cfg["WEBHOOK_RETRY_MAX_SECONDS"]))
        next_at = now + timedelta(seconds=delay)
        if claimed.disabled or next_at - delivery.created_at > timedelta(
                seconds=float(cfg["WEBHOOK_RETRY_FOR_SECONDS"])):
            next_at, outcome = None, "failed"
        else:
            outcome = "retrying"
        hook.failing_since = hook.failing_since or started
    fenced = session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == claimed.attempt,
               WebhookDelivery.status == "pending")
        .values(status="pending" if next_at else outcome, next_attempt_at=next_at,
                locked_until=None, published_at=None,
                finished_at=None if next_at else now),
        execution_options=NO_SYNC,
    )
    if fenced.rowcount != 1:
        session.rollback()
        return "superseded"
    session.add(WebhookAttempt(delivery_id=delivery_id, attempt=claimed.attempt,
                               started_at=started, duration_s=duration,
                               status_code=answer.status_code, error=answer.error,
                               next_attempt_at=next_at))
    disable_after = timedelta(seconds=float(cfg["WEBHOOK_DISABLE_AFTER_SECONDS"]))
    if answer.error is not None and hook.disabled_at is None \
            and hook.failing_since <= now - disable_after:
        disable(session, hook, now, (
            f"every delivery attempt failed from {timestamp(hook.failing_since)} to "
            f"{timestamp(now)} (the last: {answer.error}); PATCH it with "
            '{"disabled": false} to send events again'))
        log.warning("webhook %s: disabled: %s", hook.id, hook.disabled_reason)
        outcome = "failed"
    return outcome


def backoff(failures: int, first: float, most: float) -> float:
    """Seconds until the next try after the `failures`-th failed attempt."""
    delay = min(most, first * BACKOFF_FACTOR ** min(failures - 1, 64))
    return delay * random.uniform(1 - JITTER, 1 + JITTER)


# ---- one HTTP request ------------------------------------------------------------------------

def post(target: Target, headers: dict[str, str], body: bytes, timeout: float) -> Answer:
    """POST `body` to `target` at one of its checked addresses, within `timeout` seconds in
    all (a timer cuts the connection when it is up, however slowly the answer trickles in).
    A 2xx is success; anything else, or no answer, an error saying what happened."""
    deadline = monotonic() + timeout
    try:
        sock = _connect(target, deadline)
    except (OSError, ssl.SSLError) as exc:
        return Answer(None, _why(exc, timeout))
    conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock  # already connected (to the checked address): http.client uses it
    timer = threading.Timer(max(0.0, deadline - monotonic()), _cut, (sock,))
    timer.start()
    try:
        conn.request("POST", target.path, body, {
            "Host": target.host_header, "Content-Type": "application/json",
            "User-Agent": USER_AGENT, **headers})
        response = conn.getresponse()
        status = response.status
        if 200 <= status < 300:
            return Answer(status, None)
        if 300 <= status < 400:
            where = response.getheader("Location", "")
            return Answer(status, f"HTTP {status}: a redirect to {where[:500]!r}, not followed "
                          "(webhook URLs must answer themselves)")
        shown = response.read(BODY_SHOWN).decode("utf-8", "replace")
        shown = "".join(c if c.isprintable() else " " for c in shown).strip()
        return Answer(status, f"HTTP {status}" + (f": {shown}" if shown else ""))
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, _why(exc, timeout) if monotonic() < deadline
                      else f"no answer within {timeout:g} s")
    finally:
        timer.cancel()
        conn.close()


def _connect(target: Target, deadline: float) -> socket.socket:
    """A connection to the first of the target's addresses that takes one (TLS for https,
    verified against the host's name)."""
    error: OSError = TimeoutError("no time left to connect")
    sock = None
    for address in target.addresses:
        left = deadline - monotonic()
        if left <= 0:
            break
        try:
            sock = socket.create_connection((address, target.port), timeout=left)
            break
        except OSError as exc:
            error = exc
    if sock is None:
        raise error
    if target.scheme == "https":
        sock.settimeout(max(0.01, deadline - monotonic()))
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
    return sock


def _cut(sock: socket.socket) -> None:
    """The deadline passed: end the exchange (the plain socket's shutdown, which also wakes
    a TLS read blocked in another thread)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate is not valid: {exc.verify_message}"
    return f"{type(exc).__name__}: {exc}"[:500]
