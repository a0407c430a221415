"""Webhooks: the events a tenant can subscribe to, recording them, signing, and safe URLs.

Events. `emit(session, tenant_id, type, data)` records an event for every enabled webhook
of the tenant subscribed to `type`: one `WebhookDelivery` row each (the outbox), in the
caller's transaction, so an event exists exactly when the change that made it is committed.
Once that transaction commits, a wake-up message per delivery goes to the webhook worker
(worker/webhooks.py sends it, signed, and retries it); a message that is lost is sent again
by the dispatcher (worker/reconcile.py). The body sent is fixed here, once:
`{"type", "timestamp", "data"}`, with `data` the resource as the API returns it.

Signing follows Standard Webhooks (standardwebhooks.com), with its reference library:
`webhook-id` (the event's id, the same on every attempt), `webhook-timestamp` (the
attempt's, in seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body" under the secret>`. After a rotation the previous secret signs too, for a
grace period (24 h unless the rotation says otherwise): the header then holds both
signatures, space-separated, and a receiver that verifies with either secret accepts it.

Secrets are stored as they are: a signature needs the secret itself, so a hash will not do,
and encrypting it would need a key kept outside the database (a setting), which the service
does not have. Whoever reads the database can forge deliveries: after a leak of it (or of a
backup), every secret is rotated with a grace period of 0.

URLs. Only http and https, without credentials in them. A host that resolves to anything
but public unicast addresses (loopback, private, link-local such as the cloud metadata
169.254.169.254, shared, reserved, multicast; IPv6 forms that embed such an IPv4 address) is
refused, when the webhook is created or changed and again at every delivery, unless
WEBHOOK_ALLOW_PRIVATE_NETWORKS is true. A delivery connects to the very address it checked
(never resolving the name again), so a DNS answer that changes in between cannot redirect it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import secrets
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import standardwebhooks
from sqlalchemy.orm import Session

from service.models import Prediction, Run, Webhook, WebhookDelivery, utcnow
from service.serialize import prediction_json, run_json, timestamp

log = logging.getLogger(__name__)

# Every event type a webhook may subscribe to; "*" subscribes to all, those added later too.
# A new kind of job adds its types here (and to openapi.yaml's WebhookEventType) and calls
# `emit` where its status changes.
EVENT_TYPES = ("run.started", "run.succeeded", "run.failed", "run.cancelled",
               "prediction.started", "prediction.succeeded", "prediction.failed",
               "prediction.cancelled", "sweep.succeeded", "sweep.failed", "sweep.cancelled")
ALL_EVENTS = "*"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: 24 to 64 random bytes
# How long the previous secret signs beside the new one after a rotation, by default.
GRACE_SECONDS = 24 * 3600
# session.info key: the deliveries emitted in the session's transaction, to publish on commit.
_OUTBOX = "webhook_outbox"

Resolver = Callable[..., list[tuple[Any, ...]]]  # socket.getaddrinfo's signature


def new_secret() -> str:
    """`whsec_` + base64 of SECRET_BYTES random bytes (Standard Webhooks' format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


# ---- recording events ------------------------------------------------------------------------

def emit(session: Session, tenant_id: str, type: str, data: dict[str, Any]) -> list[str]:
    """Record the event `type` with `data` (the resource's JSON, e.g. run_json(run)) for each
    enabled webhook of `tenant_id` subscribed to it, in `session`'s transaction (never
    committed here); their wake-up messages go out once that transaction commits. The ids of
    the deliveries recorded (none when no webhook wants the event). `type` must be one of
    EVENT_TYPES (ValueError otherwise)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}; add it to EVENT_TYPES")
    hooks = session.scalars(sa.select(Webhook).where(
        Webhook.tenant_id == tenant_id, Webhook.disabled_at.is_(None))).all()
    targets = [h for h in hooks if type in h.events or ALL_EVENTS in h.events]
    if not targets:
        return []
    now = utcnow()
    body = json.dumps({"type": type, "timestamp": timestamp(now), "data": data},
                      separators=(",", ":"), allow_nan=False)
    event_id = new_event_id()
    rows = [WebhookDelivery(webhook_id=h.id, event_id=event_id, event_type=type, body=body,
                            created_at=now, status="pending", attempts=0,
                            next_attempt_at=now, published_at=now) for h in targets]
    session.add_all(rows)
    session.flush()
    _publish_on_commit(session, [row.id for row in rows])
    return [row.id for row in rows]


# A run's status -> the event of reaching it.
RUN_EVENTS = {"running": "run.started", "succeeded": "run.succeeded", "failed": "run.failed",
              "cancelled": "run.cancelled"}


def emit_run(session: Session, run: Run) -> list[str]:
    """`emit` the event of the status `run` has just reached, with the run's JSON."""
    return emit(session, run.tenant_id, RUN_EVENTS[run.status], run_json(run))


def emit_status(session: Session, job: Run | Prediction) -> list[str]:
    """`emit` the event of the status a job (a run, or a batch prediction: prediction.started,
    ...) has just reached, with its JSON."""
    if isinstance(job, Run):
        return emit_run(session, job)
    event = "prediction." + RUN_EVENTS[job.status].removeprefix("run.")
    return emit(session, job.tenant_id, event, prediction_json(job))


def _publish_on_commit(session: Session, ids: list[str]) -> None:
    if _OUTBOX not in session.info:
        sa.event.listen(session, "after_commit", _publish_outbox)
        sa.event.listen(session, "after_soft_rollback", _forget_outbox)
    session.info.setdefault(_OUTBOX, []).extend(ids)


def _publish_outbox(session: Session) -> None:
    """After the commit: wake the webhook worker for each delivery. Best effort: a message
    that cannot be sent now is sent by the dispatcher once REQUEUE_AFTER_SECONDS passed."""
    ids = session.info.pop(_OUTBOX, None) or []
    try:
        from service import queue

        for delivery_id in ids:
            queue.send_delivery(delivery_id)
    except Exception:  # noqa: BLE001 - the broker may be down; the dispatcher sends them
        log.warning("could not publish %d webhook deliveries; the dispatcher will", len(ids),
                    exc_info=True)


def _forget_outbox(session: Session, _previous: Any) -> None:
    session.info.pop(_OUTBOX, None)


# ---- signing ---------------------------------------------------------------------------------

def signing_secrets(hook: Webhook, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous one while its
    grace period lasts."""
    kept = hook.previous_secret is not None and hook.previous_secret_expires_at is not None \
        and hook.previous_secret_expires_at > now
    return [hook.secret, *([hook.previous_secret] if kept else [])]


def signed_headers(keys: list[str], event_id: str, at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at `at`, signed with each of `keys`."""
    signatures = [standardwebhooks.Webhook(k).sign(event_id, at, body) for k in keys]
    return {"webhook-id": event_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": " ".join(signatures)}


def rotate(hook: Webhook, grace_seconds: int, now: datetime) -> str:
    """Give `hook` a new secret (returned); the current one signs beside it for
    `grace_seconds` (0: it stops at once). A second rotation within a grace period drops
    the oldest secret."""
    hook.previous_secret = hook.secret if grace_seconds > 0 else None
    hook.previous_secret_expires_at = now + timedelta(seconds=grace_seconds) \
        if grace_seconds > 0 else None
    hook.secret = new_secret()
    return hook.secret


def disable(session: Session, hook: Webhook, now: datetime, reason: str) -> None:
    """Send `hook` nothing more: disabled, saying why, and its pending deliveries failed
    (an attempt in flight then finds its delivery no longer pending)."""
    hook.disabled_at, hook.disabled_reason = now, reason
    session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == hook.id, WebhookDelivery.status == "pending")
        .values(status="failed", next_attempt_at=None, locked_until=None, finished_at=now),
        execution_options={"synchronize_session": False},
    )


# ---- safe URLs -------------------------------------------------------------------------------

class Refused(ValueError):
    """A URL that must not be called: the message says why."""


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the URL's parts and the checked addresses its host resolved to."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address, also when an IPv6 address embeds an IPv4 one (mapped,
    6to4, Teredo, NAT64), which is then what is checked."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
    return ip.is_global and not ip.is_multicast


def check_url(url: str, *, allow_private: bool,
              resolve: Resolver = socket.getaddrinfo) -> Target:
    """The URL's target, its host resolved and every address checked; Refused saying why
    it may not be called."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise Refused("has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("must not hold credentials (user:password@); put a token in the path "
                      "or verify the signature instead")
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    try:
        found = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"its host {host!r} does not resolve ({exc})") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]).split("%")[0] for info in found))
    if not addresses:
        raise Refused(f"its host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            if not is_public(ipaddress.ip_address(address)):
                raise Refused(
                    f"its host {host!r} is {address}, a loopback, private, link-local or "
                    "reserved address: webhooks are sent to public addresses only "
                    "(WEBHOOK_ALLOW_PRIVATE_NETWORKS)")
    path = parts.path or "/"
    return Target(parts.scheme, host, port, f"{path}?{parts.query}" if parts.query else path,
                  addresses)
