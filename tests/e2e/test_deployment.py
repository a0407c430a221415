"""The deployment end to end: docker-compose.yml's commands as processes, on PostgreSQL and
Redis, isolated from any dev server by their own database, Redis key prefix and queue."""

from __future__ import annotations

import re
import signal
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import nn
from service import statstore
from tests.conftest import REDIS_URL, free_port
from tests.e2e import flow
from tests.e2e.compose import command
from tests.procs import Procs


def deploy(procs: Procs, pg_url: str, prefix: str, **settings: object) -> flow.Api:
    """migrate, then api, worker and beat, with `settings` as BACKPROP_* variables
    (BROKER_URL among them: the machine's Redis unless given)."""
    procs.env.update(
        BACKPROP_DATABASE_URL=pg_url,
        BACKPROP_BROKER_URL=str(settings.pop("BROKER_URL", REDIS_URL)),
        BACKPROP_BROKER_KEYPREFIX=prefix, BACKPROP_QUEUE=f"backprop-{uuid.uuid4().hex[:8]}",
        **{f"BACKPROP_{k}": str(v) for k, v in settings.items()},
    )
    procs.run("migrate", command("migrate"))
    key = flow.create_key(procs, "e2e")  # the API is called as a tenant made by the CLI
    port = free_port()
    procs.start("api", command("api", **{"0.0.0.0:8000": f"127.0.0.1:{port}"}))
    procs.start("worker", command("worker"))
    procs.start("beat", command("beat"))
    base = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{base}/readyz")
    return flow.Api(base, key)


# The database and the prefix are asked for before `procs`, so the processes stop before
# the database is dropped (fixtures are torn down in reverse order).
@pytest.fixture
def api(pg_url: str, redis_prefix: str, procs: Procs) -> Iterator[flow.Api]:
    yield deploy(procs, pg_url, redis_prefix)
    procs.check()  # no process died along the way


def test_the_whole_flow(api: flow.Api, procs: Procs) -> None:
    flow.full_flow(api, procs)


def test_a_killed_worker_loses_nothing(pg_url: str, redis_prefix: str, procs: Procs) -> None:
    """SIGKILL the worker mid-run: a second worker takes the run over when its lease
    expires and resumes from the checkpoint. Cancelled once it has trained on, the run has
    every epoch exactly once and exactly the weights of an unbroken run of as many epochs,
    and its statistics are thinned as an unbroken run's are (past epoch 2: the powers of 2,
    and the last). (A run that trains until it is cancelled, so that the kill comes mid-run
    however fast the machine trains.)"""
    api = deploy(procs, pg_url, redis_prefix, LEASE_SECONDS=2, RECONCILE_SECONDS=1,
                 CHECKPOINT_SECONDS=1, RUN_MAX_STATS_EPOCHS=20)
    run = flow.start_run(api, flow.create_xor(api), training={"epochs": 100_000})
    run_id, thinned_after = run["id"], run["stats_thinned_after"]
    assert thinned_after == statstore.thinned_after(100_000, 20) == 2
    engine = sa.create_engine(pg_url)
    try:
        stored = procs.wait_for("a checkpoint", lambda: _checkpoint_epoch(engine, run_id),
                                flow.RUN_SECONDS)
    finally:
        engine.dispose()
    procs.stop("worker", signal.SIGKILL)  # the Celery main process and its pool process
    procs.start("worker", command("worker"))  # the same log file: attempt 1 is in it too

    claimed = procs.wait_for("the second worker to take the run over", lambda: re.search(
        rf"run {run_id}: claimed by \S+ \(attempt 2, from epoch (\d+)\)",
        procs.report("worker", lines=1_000_000)), 60, interval=0.2)
    resumed = int(claimed[1])
    assert resumed >= stored  # from the checkpoint (the newest one, written before the kill)
    procs.wait_for("the run to train on", lambda: api.get(
        f"/v1/runs/{run_id}")["epochs_completed"] > resumed + 20, flow.RUN_SECONDS)
    api.post(f"/v1/runs/{run_id}/cancel", {})
    done = flow.wait_until(api, procs, run_id, timeout=30)
    assert (done["status"], done["attempts"]) == ("cancelled", 2), done
    trained = done["epochs_completed"]
    assert flow.epoch_numbers(api, run_id) == list(range(1, trained + 1))  # each exactly once
    stats = api.get(f"/v1/runs/{run_id}/layer-stats", params={"layer": 0, "limit": 1000})
    kept = [e for e in range(1, trained + 1) if statstore.kept(e, thinned_after)]
    assert [s["epoch"] for s in stats["items"]] == kept + ([] if kept[-1] == trained
                                                           else [trained])

    inputs, targets = nn.generate("xor", 500, 0, 1)
    plan = nn.build(flow.XOR_NET, {**flow.XOR_TRAINING, "epochs": trained},
                    nn.describe(inputs, targets))
    unbroken = nn.weights_to_json(nn.train(plan, inputs, targets).weights)["layers"]
    served = api.get(f"/v1/runs/{run_id}/weights")["layers"]
    assert served == unbroken  # bit for bit: JSON round-trips floats exactly


def _checkpoint_epoch(engine: sa.Engine, run_id: str) -> int | None:
    """The epoch of the run's stored checkpoint (None before the first)."""
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT epoch FROM artifacts WHERE run_id = :id "
                                   "AND kind = 'checkpoint'"), {"id": run_id})
