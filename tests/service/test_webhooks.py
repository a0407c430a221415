"""/v1/webhooks: create, list, get, update, delete, rotate the secret, the delivery log;
safe URLs; events recorded by the API's own status change (cancelling a queued run)."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from service import db
from service.models import WebhookDelivery, utcnow
from service.webhooks import new_secret, signed_headers
from tests.service.conftest import add_tenant
from tests.service.helpers import create_run, create_xor_dataset, problem_paths

PUBLIC_URL = "http://93.184.215.14/hook"  # an IP literal: no DNS look-up, never called here
LOCAL_URL = "http://127.0.0.1:9/hook"


def _create(client: Any, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/webhooks", json={"url": PUBLIC_URL, "events": ["run.succeeded"],
                                             **body})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_create_get_list_update_delete(any_client: Any) -> None:
    made = _create(any_client, description="registry", events=["run.succeeded", "run.failed"])
    secret = made["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert made["events"] == ["run.succeeded", "run.failed"]
    assert made["disabled"] is False and made["disabled_reason"] is None
    got = any_client.get(f"/v1/webhooks/{made['id']}").get_json()
    assert "secret" not in got and got["url"] == PUBLIC_URL
    assert {k: v for k, v in made.items() if k != "secret"} == got

    second = _create(any_client)
    page = any_client.get("/v1/webhooks?limit=1").get_json()
    assert [w["id"] for w in page["items"]] == [second["id"]]  # newest first
    rest = any_client.get(f"/v1/webhooks?limit=1&cursor={page['next_cursor']}").get_json()
    assert [w["id"] for w in rest["items"]] == [made["id"]] and rest["next_cursor"] is None

    changed = any_client.patch(f"/v1/webhooks/{made['id']}", json={
        "events": ["*"], "description": None, "url": "https://93.184.215.14:8443/x?y=1"})
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["events"] == ["*"] and changed.get_json()["description"] is None
    assert changed.get_json()["url"] == "https://93.184.215.14:8443/x?y=1"

    assert any_client.delete(f"/v1/webhooks/{made['id']}").status_code == 204
    assert any_client.get(f"/v1/webhooks/{made['id']}").status_code == 404
    assert any_client.delete(f"/v1/webhooks/{made['id']}").status_code == 404


def test_another_tenants_webhook_is_not_found(any_app: Flask, any_client: Any) -> None:
    made = _create(any_client)
    _, key = add_tenant(any_app, "other")
    other = any_app.test_client(api_key=key)
    base = f"/v1/webhooks/{made['id']}"
    assert other.get("/v1/webhooks").get_json()["items"] == []
    for method, path, body in (("get", base, None), ("patch", base, {"disabled": True}),
                               ("delete", base, None), ("post", f"{base}/rotate-secret", None),
                               ("get", f"{base}/deliveries", None)):
        resp = getattr(other, method)(path, json=body) if body else getattr(other, method)(path)
        assert resp.status_code == 404, (method, path)
    assert any_client.get(base).get_json()["disabled"] is False  # untouched


@pytest.mark.parametrize("url", [
    "ftp://93.184.215.14/", "file:///etc/passwd", "http:///nohost",
    "http://user:secret@93.184.215.14/",
    "http://127.0.0.1/", "http://localhost:8000/", "http://[::1]/", "http://0.0.0.0/",
    "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.1.1/", "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
    "http://[::ffff:127.0.0.1]/", "http://[2002:7f00:1::]/", "http://[64:ff9b::a9fe:a9fe]/",
    "http://224.0.0.1/",
])
def test_urls_that_must_not_be_called_are_refused(client: Any, url: str) -> None:
    resp = client.post("/v1/webhooks", json={"url": url, "events": ["run.started"]})
    assert resp.status_code == 422
    assert problem_paths(resp) == ["url"]
    made = _create(client)
    resp = client.patch(f"/v1/webhooks/{made['id']}", json={"url": url})
    assert resp.status_code == 422 and problem_paths(resp) == ["url"]
    assert client.get(f"/v1/webhooks/{made['id']}").get_json()["url"] == PUBLIC_URL


def test_private_urls_are_allowed_when_the_operator_says_so(app: Flask, client: Any) -> None:
    assert client.post("/v1/webhooks", json={"url": LOCAL_URL, "events": ["*"]}
                       ).status_code == 422
    app.config["WEBHOOK_ALLOW_PRIVATE_NETWORKS"] = True
    assert _create(client, url=LOCAL_URL)["url"] == LOCAL_URL
    resp = client.post("/v1/webhooks", json={"url": "ftp://127.0.0.1/", "events": ["*"]})
    assert resp.status_code == 422 and problem_paths(resp) == ["url"]  # http(s) only, still


@pytest.mark.parametrize(("body", "path"), [
    ({"events": ["run.started"]}, "url"),
    ({"url": PUBLIC_URL, "events": []}, "events"),
    ({"url": PUBLIC_URL, "events": ["run.exploded"]}, "events[0]"),
    ({"url": PUBLIC_URL, "events": ["*"], "secret": "whsec_mine"}, "secret"),
])
def test_bad_bodies_name_the_field(client: Any, body: dict, path: str) -> None:
    resp = client.post("/v1/webhooks", json=body)
    assert resp.status_code == 422 and problem_paths(resp) == [path]


def test_rotating_the_secret_keeps_the_old_one_for_the_grace_period(any_client: Any) -> None:
    made = _create(any_client)
    rotated = any_client.post(f"/v1/webhooks/{made['id']}/rotate-secret")
    assert rotated.status_code == 200
    body = rotated.get_json()
    assert body["secret"].startswith("whsec_") and body["secret"] != made["secret"]
    until = datetime.fromisoformat(body["previous_secret_expires_at"])
    left = until - datetime.now(UTC)
    assert timedelta(hours=23) < left <= timedelta(hours=24)
    now = any_client.post(f"/v1/webhooks/{made['id']}/rotate-secret", json={"grace_seconds": 0})
    assert now.get_json()["previous_secret_expires_at"] is None
    bad = any_client.post(f"/v1/webhooks/{made['id']}/rotate-secret", json={"grace_seconds": -1})
    assert bad.status_code == 422 and problem_paths(bad) == ["grace_seconds"]


def test_cancelling_a_queued_run_records_its_event(any_app: Flask, any_client: Any) -> None:
    """run.cancelled is recorded for each enabled webhook subscribed to it ("*" too), in the
    cancel's transaction, with the run as the cancel answered it."""
    wanted = _create(any_client, events=["run.cancelled"])
    everything = _create(any_client, events=["*"])
    other_event = _create(any_client, events=["run.succeeded"])
    paused = _create(any_client, events=["run.cancelled"])
    any_client.patch(f"/v1/webhooks/{paused['id']}", json={"disabled": True})
    run = create_run(any_client, create_xor_dataset(any_client)["id"])
    cancelled = any_client.post(f"/v1/runs/{run['id']}/cancel").get_json()
    assert cancelled["status"] == "cancelled"

    def log(hook: dict) -> list[dict]:
        return any_client.get(f"/v1/webhooks/{hook['id']}/deliveries").get_json()["items"]

    assert log(other_event) == [] and log(paused) == []
    got = log(wanted) + log(everything)
    assert [(d["event_type"], d["status"], d["attempts"]) for d in got] == \
        [("run.cancelled", "pending", [])] * 2
    assert got[0]["event_id"] == got[1]["event_id"]  # one event, two deliveries
    with db.session_scope(any_app) as session:
        body = json.loads(session.scalar(sa.select(WebhookDelivery.body).where(
            WebhookDelivery.id == got[0]["id"])))
    assert body["type"] == "run.cancelled" and body["data"] == cancelled
    assert set(body) == {"type", "timestamp", "data"}
    # Cancelling again changes nothing, and records nothing more.
    any_client.post(f"/v1/runs/{run['id']}/cancel")
    assert len(log(wanted)) == 1
    failed = any_client.get(f"/v1/webhooks/{wanted['id']}/deliveries?status=failed")
    assert failed.get_json()["items"] == []


def test_disabling_and_enabling(any_client: Any) -> None:
    """Disabled by a PATCH, a webhook's pending deliveries fail (nothing more is sent)."""
    made = _create(any_client, events=["*"])
    run = create_run(any_client, create_xor_dataset(any_client)["id"])
    any_client.post(f"/v1/runs/{run['id']}/cancel")
    log = f"/v1/webhooks/{made['id']}/deliveries"
    assert [d["status"] for d in any_client.get(log).get_json()["items"]] == ["pending"]
    off = any_client.patch(f"/v1/webhooks/{made['id']}", json={"disabled": True}).get_json()
    assert off["disabled"] is True and off["disabled_reason"] == "disabled by a PATCH"
    assert [d["status"] for d in any_client.get(log).get_json()["items"]] == ["failed"]
    on = any_client.patch(f"/v1/webhooks/{made['id']}", json={"disabled": False}).get_json()
    assert (on["disabled"], on["disabled_at"], on["disabled_reason"]) == (False, None, None)


def test_the_readmes_receiver_takes_our_deliveries_and_refuses_forgeries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """README.md's receiver (section "Webhooks"), run as written, against requests signed
    as the webhook worker signs them."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"### Webhooks\n.*?```python\n(.*?)```", readme, re.S)
    assert code, "the README's receiver moved"
    secret = new_secret()
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    namespace: dict[str, Any] = {"__name__": __name__}  # Flask finds its root from it
    exec(compile(code[1], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    client = namespace["app"].test_client()
    body = json.dumps({"type": "run.succeeded", "timestamp": "2026-11-27T21:00:00Z",
                       "data": {"id": "r1", "metrics": {"train_loss": 0.25}}})

    def post(data: str, key: str = secret, at: datetime | None = None,
             event_id: str = "evt_1") -> int:
        headers = signed_headers([key], event_id, at or utcnow(), body)
        return client.post("/backprop", data=data, headers=headers,
                           content_type="application/json").status_code

    assert post(body) == 204
    assert post(body) == 204  # the retry: accepted, not handled twice
    assert capsys.readouterr().out == "run r1 reached 0.25\n"
    assert post(body, key=new_secret(), event_id="evt_2") == 400
    assert post(body.replace("0.25", "0.01"), event_id="evt_3") == 400
    assert post(body, at=utcnow() - timedelta(minutes=10), event_id="evt_4") == 400
    assert capsys.readouterr().out == ""
