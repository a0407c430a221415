"""/v1/webhooks: endpoints that are sent a tenant's events, signed (service/webhooks.py).

The secret is shown in the answers that make it (creation, rotation) and never again. A URL
that may not be called (not http(s), or resolving to a private address) is a 422 at `url`.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request

from service import idempotency
from service.api.common import fetch, json_response, owned, select_owned
from service.auth import tenant_id
from service.db import get_session
from service.errors import validation_error
from service.models import DELIVERY_STATUSES, Webhook, WebhookAttempt, WebhookDelivery, utcnow
from service.pagination import page
from service.params import arg_choices, json_object
from service.schemas import validate
from service.serialize import delivery_json, webhook_json
from service.webhooks import GRACE_SECONDS, Refused, check_url, disable, new_secret, rotate

bp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks")


@bp.post("")
@idempotency.idempotent
def create() -> Response:
    body = json_object()
    validate("WebhookCreate", body)
    _check(body["url"])
    session = get_session()
    secret = new_secret()
    hook = Webhook(tenant_id=tenant_id(), url=body["url"], events=_events(body["events"]),
                   description=body.get("description"), secret=secret, created_at=utcnow())
    session.add(hook)
    session.flush()
    response = json_response(webhook_json(hook, secret), 201, f"/v1/webhooks/{hook.id}")
    return idempotency.commit(session, response) or response


@bp.get("")
def list_() -> Response:
    keys = (Webhook.created_at, Webhook.id)
    return json_response(page(get_session(), select_owned(Webhook), keys, webhook_json,
                              descending=True))


@bp.get("/<uuid:webhook_id>")
def get(webhook_id: uuid.UUID) -> Response:
    return json_response(webhook_json(fetch(get_session(), Webhook, webhook_id, "webhook")))


@bp.patch("/<uuid:webhook_id>")
def update(webhook_id: uuid.UUID) -> Response:
    """Change the URL, events or description; `disabled`: false enables it again (and
    forgets its failures), true stops sending to it."""
    body = json_object()
    validate("WebhookUpdate", body)
    session = get_session()
    hook = fetch(session, Webhook, webhook_id, "webhook")
    if "url" in body:
        _check(body["url"])
        hook.url = body["url"]
    if "events" in body:
        hook.events = _events(body["events"])
    if "description" in body:
        hook.description = body["description"]
    if body.get("disabled") is False:
        hook.disabled_at = hook.disabled_reason = hook.failing_since = None
    elif body.get("disabled") is True and hook.disabled_at is None:
        disable(session, hook, utcnow(), "disabled by a PATCH")
    session.commit()
    return json_response(webhook_json(hook))


@bp.delete("/<uuid:webhook_id>")
def delete(webhook_id: uuid.UUID) -> Response:
    """Deletes the webhook with its delivery log; nothing more is sent to it."""
    session = get_session()
    done = session.execute(sa.delete(Webhook).where(owned(Webhook),
                                                    Webhook.id == str(webhook_id)))
    if done.rowcount == 0:
        fetch(session, Webhook, webhook_id, "webhook")  # the 404
    session.commit()
    return Response(status=204)


@bp.post("/<uuid:webhook_id>/rotate-secret")
def rotate_secret(webhook_id: uuid.UUID) -> Response:
    """A new secret, shown in this answer; the old one signs beside it for `grace_seconds`
    (default 24 h; 0: it stops at once). The body is optional."""
    body = json_object() if request.get_data(cache=True) else {}
    validate("WebhookRotateSecret", body)
    session = get_session()
    hook = fetch(session, Webhook, webhook_id, "webhook")
    secret = rotate(hook, body.get("grace_seconds", GRACE_SECONDS), utcnow())
    session.commit()
    return json_response(webhook_json(hook, secret))


@bp.get("/<uuid:webhook_id>/deliveries")
def deliveries(webhook_id: uuid.UUID) -> Response:
    """The delivery log, newest first: each event sent (or to send) and its attempts."""
    session = get_session()
    hook = fetch(session, Webhook, webhook_id, "webhook")
    stmt = sa.select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    statuses = arg_choices("status", DELIVERY_STATUSES)
    if statuses:
        stmt = stmt.where(WebhookDelivery.status.in_(statuses))
    keys = (WebhookDelivery.created_at, WebhookDelivery.id)
    found = page(session, stmt, keys, lambda d: d, descending=True)
    rows = found["items"]
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in rows}
    if rows:
        for a in session.scalars(sa.select(WebhookAttempt).where(
                WebhookAttempt.delivery_id.in_(attempts)).order_by(WebhookAttempt.attempt)):
            attempts[a.delivery_id].append(a)
    found["items"] = [delivery_json(d, attempts[d.id]) for d in rows]
    return json_response(found)


def _check(url: str) -> None:
    try:
        check_url(url, allow_private=current_app.config["WEBHOOK_ALLOW_PRIVATE_NETWORKS"])
    except Refused as exc:
        raise validation_error("url", str(exc)) from None


def _events(events: list[str]) -> list[str]:
    return list(dict.fromkeys(events))  # in order, each once
