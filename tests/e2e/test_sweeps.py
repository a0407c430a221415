"""Sweeps on the worker pool: PostgreSQL, Redis, the API under gunicorn, two Celery workers
and beat, as docker-compose.yml runs them. A grid sweep finishes with its children spread
over both workers and never more than max_concurrent of them going at once; its best run is
promoted to a model alias and its sweep.succeeded webhook is delivered, signed, to a receiver
on loopback by the webhook worker; ASHA stops some children of a random sweep; a cancel cancels
every child; a bad parameter value is a 422 naming it."""

from __future__ import annotations

import re
from typing import Any

from tests.e2e import flow
from tests.e2e.compose import command
from tests.e2e.test_deployment import deploy
from tests.e2e.test_webhooks import ALLOW
from tests.procs import Procs
from tests.receiver import Receiver, verify  # the receiver fixture: tests/conftest.py

LR = "training.optimizer.learning_rate"
UNITS = "network.layers[0].units"
SMALL_XOR = {**flow.XOR, "n_samples": 100}
ACTIVE = ("queued", "running", "cancelling")


def _sweep(api: flow.Api, dataset_id: str, **fields: Any) -> dict[str, Any]:
    training = {**flow.XOR_TRAINING, **fields.pop("training", {})}
    body = {"dataset_id": dataset_id, "network": flow.XOR_NET, "training": training, **fields}
    return api.post("/v1/sweeps", body, 202)


def _watch(api: flow.Api, procs: Procs, sweep_id: str, most_active: int) -> dict[str, Any]:
    """Poll the sweep until it is settled, checking that at most `most_active` children are
    ever queued, running or cancelling at once."""
    seen = 0

    def settled() -> dict[str, Any] | None:
        nonlocal seen
        now = api.get(f"/v1/sweeps/{sweep_id}")
        active = sum(now["counts"][s] for s in ACTIVE)
        assert active <= most_active, now["counts"]
        seen = max(seen, active)
        return now if now["finished_at"] is not None else None

    done = procs.wait_for(f"sweep {sweep_id} to settle", settled, 4 * flow.RUN_SECONDS,
                          interval=0.2)
    assert seen == most_active  # it did run that many at once
    return done


def _children(api: flow.Api, sweep_id: str) -> list[dict[str, Any]]:
    return api.get(f"/v1/runs?sweep_id={sweep_id}&limit=100")["items"]


def test_sweeps_on_two_workers(pg_url: str, redis_prefix: str, procs: Procs,
                               receiver: Receiver) -> None:
    api = deploy(procs, pg_url, redis_prefix, RECONCILE_SECONDS=1, FLUSH_SECONDS=0, **ALLOW)
    procs.start("worker2", command("worker"))
    hook = api.post("/v1/webhooks", {"url": receiver.url, "events": ["sweep.succeeded"]}, 201)
    dataset = api.post("/v1/datasets", {"name": "xor", "generator": SMALL_XOR}, 201)["id"]

    # a value that makes an invalid run: nothing is stored, the 422 names it
    bad = api.call("POST", "/v1/sweeps", 422, json={
        "dataset_id": dataset, "network": flow.XOR_NET, "training": flow.XOR_TRAINING,
        "parameters": {LR: [0.5, -1]}}).json()
    assert bad["errors"][0]["path"] == f"parameters['{LR}'][1]"

    grid = _sweep(api, dataset, parameters={LR: [0.5, 2.0], UNITS: [2, 4]},
                  max_concurrent=2, tags={"sweep": "grid"})
    done = _watch(api, procs, grid["id"], 2)
    assert done["status"] == "succeeded" and done["counts"]["succeeded"] == 4
    children = _children(api, grid["id"])
    claimed = {name: set(re.findall(r"run (\S+): claimed by", procs.report(name, lines=10**6)))
               for name in ("worker", "worker2")}
    ids = {c["id"] for c in children}
    assert claimed["worker"] & ids and claimed["worker2"] & ids  # spread over both
    board = api.get(f"/v1/sweeps/{grid['id']}/leaderboard")["items"]
    assert board[0]["run_id"] == done["best_run_id"]
    assert [r["metric"] for r in board] == sorted(r["metric"] for r in board)
    model = api.post(f"/v1/sweeps/{grid['id']}/promote", {"model": "xor-best"}, 201)
    assert model["run_id"] == done["best_run_id"]
    assert api.post("/v1/models/xor-best/predict", {"inputs": [[1, 1]]})["outputs"]
    (event,) = [verify(r, hook["secret"]) for r in receiver.wait(1, timeout=flow.RUN_SECONDS)]
    assert event["type"] == "sweep.succeeded"
    assert (event["data"]["id"], event["data"]["best_run_id"]) == (grid["id"],
                                                                   done["best_run_id"])

    # ASHA: rungs at 10, 30, 90 epochs of 150; the strong learning rates first (children
    # are released in order), so the weak ones meet them at the rungs and stop
    asha = _sweep(api, dataset, max_concurrent=2, training={"epochs": 150},
                  parameters={LR: [2.0, 1.0, 0.3, 0.01, 0.003, 0.001]},
                  early_stopping={"type": "asha", "min_epochs": 10, "reduction_factor": 3})
    done = _watch(api, procs, asha["id"], 2)
    assert done["status"] == "succeeded" and done["counts"]["stopped_early"] >= 1, done
    stopped = [c for c in _children(api, asha["id"])
               if (c["error"] or {}).get("code") == "stopped_early"]
    assert stopped and all(c["status"] == "cancelled" and c["epochs_completed"] < 150
                           for c in stopped)
    assert "stopped early by ASHA" in stopped[0]["error"]["message"]

    # cancel: long children, one pair running, the rest pending
    long = _sweep(api, dataset, parameters={LR: [0.1, 0.2, 0.3, 0.4]}, max_concurrent=2,
                  training={"epochs": 20000})
    procs.wait_for("a child to run", lambda: api.get(
        f"/v1/sweeps/{long['id']}")["counts"]["running"], flow.RUN_SECONDS)
    api.post(f"/v1/sweeps/{long['id']}/cancel", {}, 200)
    done = procs.wait_for("the cancelled sweep to settle", lambda: (lambda s: s if s[
        "finished_at"] else None)(api.get(f"/v1/sweeps/{long['id']}")), flow.RUN_SECONDS)
    assert done["status"] == "cancelled" and done["counts"]["cancelled"] == 4, done
    assert {c["status"] for c in _children(api, long["id"])} == {"cancelled"}
    # one sweep.succeeded for each sweep that succeeded (the cancelled one's is not subscribed)
    got = [verify(r, hook["secret"]) for r in receiver.wait(2, timeout=flow.RUN_SECONDS)]
    assert [(e["type"], e["data"]["id"]) for e in got] == [
        ("sweep.succeeded", grid["id"]), ("sweep.succeeded", asha["id"])]
    assert len(receiver.requests) == 2
    procs.check()
