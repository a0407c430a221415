"""Webhooks through the real processes, to a real receiver on loopback: on PostgreSQL and
Redis (docker-compose.yml's commands), a webhook worker killed with SIGKILL while the
receiver holds its request, and the event delivered again with the same webhook-id; on
SQLite and the filesystem broker (`backprop up`), a run's events delivered."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.e2e import flow
from tests.e2e.compose import command
from tests.e2e.test_deployment import deploy
from tests.procs import Procs
from tests.receiver import Hold, Receiver, verify

ALLOW = {"WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"}  # the receiver is on 127.0.0.1


def subscribe(api: flow.Api, receiver: Receiver) -> dict[str, Any]:
    return api.post("/v1/webhooks", {"url": receiver.url, "events": ["run.started",
                                                                       "run.succeeded"]}, 201)


def events(receiver: Receiver, secret: str, count: int) -> list[tuple[str, str, str]]:
    """(webhook-id, type, the run's status) of the first `count` requests, each verified."""
    return [(r.headers["webhook-id"], verify(r, secret)["type"], verify(r, secret)["data"][
        "status"]) for r in receiver.wait(count, timeout=flow.RUN_SECONDS)]


def test_a_webhook_worker_killed_mid_delivery(pg_url: str, redis_prefix: str, procs: Procs,
                                              receiver: Receiver) -> None:
    """The receiver holds the first request; the webhook worker is SIGKILLed meanwhile and
    started again. Once the dead attempt's claim expires (3 x WEBHOOK_TIMEOUT_SECONDS) the
    dispatcher sends the delivery again: the same event, the same webhook-id, a valid
    signature; the delivery log shows it succeeded."""
    api = deploy(procs, pg_url, redis_prefix, WEBHOOK_TIMEOUT_SECONDS=2,
                 WEBHOOK_DISPATCH_SECONDS=0.5, **ALLOW)
    hook = subscribe(api, receiver)
    held = Hold()
    receiver.answers = [held]
    run_id = flow.start_run(api, flow.create_xor(api), training={"epochs": 20})["id"]
    assert held.arrived.wait(flow.RUN_SECONDS), procs.report()
    procs.stop("webhooks", signal.SIGKILL)  # the process and its threads, mid-request
    held.release.set()
    procs.start("webhooks", command("webhooks"))

    assert flow.wait_until(api, procs, run_id)["status"] == "succeeded"
    first = receiver.requests[0].headers["webhook-id"]
    procs.wait_for("the held event to come again", lambda: [
        r for r in receiver.requests[1:] if r.headers["webhook-id"] == first], flow.RUN_SECONDS)
    procs.wait_for("both events", lambda: {
        r.headers["webhook-id"] for r in receiver.requests} >= {first} and len(
        {r.headers["webhook-id"] for r in receiver.requests}) == 2, flow.RUN_SECONDS)
    got = events(receiver, hook["secret"], len(receiver.requests))
    assert {(kind, status) for _, kind, status in got} == {
        ("run.started", "running"), ("run.succeeded", "succeeded")}
    again = [g for g in got if g[0] == first]
    assert len(again) >= 2 and len({(kind, status) for _, kind, status in again}) == 1

    def log_settled() -> list[dict[str, Any]] | None:
        items = api.get(f"/v1/webhooks/{hook['id']}/deliveries")["items"]
        return items if [d["status"] for d in items] == ["succeeded"] * 2 else None

    log = procs.wait_for("the delivery log to settle", log_settled, 30)
    (retried,) = [d for d in log if d["event_id"] == first]
    assert retried["attempts"][-1]["status_code"] == 200
    assert retried["attempts"][-1]["attempt"] >= 2  # the killed attempt was counted
    assert "webhook delivery" in procs.report("webhooks", lines=1_000_000)


def test_backprop_up_delivers_a_runs_events(procs: Procs, tmp_path: Path,
                                            receiver: Receiver) -> None:
    api, _ = flow.start_up(procs, tmp_path, **ALLOW)
    hook = subscribe(api, receiver)
    run_id = flow.start_run(api, flow.create_xor(api), training={"epochs": 20})["id"]
    assert flow.wait_until(api, procs, run_id)["status"] == "succeeded"
    got = events(receiver, hook["secret"], 2)
    assert sorted((kind, status) for _, kind, status in got) == [
        ("run.started", "running"), ("run.succeeded", "succeeded")]
    assert (tmp_path / "var" / "logs" / "webhooks.log").exists()
