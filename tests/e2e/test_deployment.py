"""The deployment end to end: docker-compose.yml's commands as processes, on PostgreSQL and
Redis, isolated from any dev server by their own database, Redis key prefix and queue."""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import nn
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
    every epoch exactly once and exactly the weights of an unbroken run of as many epochs.
    (A run that trains until it is cancelled, so that the kill comes mid-run however fast
    the machine trains.) An event stream followed throughout, and one resumed from its
    Last-Event-ID after the takeover, each leave their client with exactly those epochs:
    the rows the dead worker wrote past its checkpoint are taken back by a rewind."""
    # Rows are flushed ten times between checkpoints, so that the stream has some past the
    # checkpoint when the worker dies.
    api = deploy(procs, pg_url, redis_prefix, LEASE_SECONDS=2, RECONCILE_SECONDS=1,
                 CHECKPOINT_SECONDS=1, FLUSH_SECONDS=0.1)
    run_id = flow.start_run(api, flow.create_xor(api), training={"epochs": 100_000})["id"]
    follow = flow.Follow(api, run_id)
    engine = sa.create_engine(pg_url)
    try:
        stored = procs.wait_for("a checkpoint", lambda: _checkpoint_epoch(engine, run_id),
                                flow.RUN_SECONDS)
        procs.wait_for("a row past the checkpoint streamed", lambda: max(
            [e["data"]["epoch"] for _, e in follow.got if e["event"] == "epoch"] or [0]
        ) > (_checkpoint_epoch(engine, run_id) or 0), flow.RUN_SECONDS, interval=0.02)
    finally:
        engine.dispose()
    killed_at = time.monotonic()
    procs.stop("worker", signal.SIGKILL)  # the Celery main process and its pool process
    procs.start("worker", command("worker"))  # the same log file: attempt 1 is in it too

    claimed = procs.wait_for("the second worker to take the run over", lambda: re.search(
        rf"run {run_id}: claimed by \S+ \(attempt 2, from epoch (\d+)\)",
        procs.report("worker", lines=1_000_000)), 60, interval=0.2)
    resumed = int(claimed[1])
    assert resumed >= stored  # from the checkpoint (the newest one, written before the kill)
    procs.wait_for("the run to train on", lambda: api.get(
        f"/v1/runs/{run_id}")["epochs_completed"] > resumed + 20, flow.RUN_SECONDS)
    head = [e for _, e in follow.got]
    again = flow.Follow(api, run_id, last_event_id=head[-1]["id"])
    api.post(f"/v1/runs/{run_id}/cancel", {})
    done = flow.wait_until(api, procs, run_id, timeout=30)
    assert (done["status"], done["attempts"]) == ("cancelled", 2), done
    trained = done["epochs_completed"]
    assert flow.epoch_numbers(api, run_id) == list(range(1, trained + 1))  # each exactly once

    rows = [e for n in range(0, trained, 1000) for e in api.get(
        f"/v1/runs/{run_id}/epochs", params={"from_epoch": n + 1, "limit": 1000})["items"]]
    whole = follow.join()
    assert flow.replayed(whole) == rows
    assert flow.replayed(head + again.join()) == rows  # resumed: no gap, no repeat
    # Rows the dead worker wrote past its checkpoint and the stream sent: one rewind to it.
    rewinds = [e["data"] for e in whole if e["event"] == "rewind"]
    doomed = [e for t, e in follow.got if t < killed_at and e["event"] == "epoch"
              and e["data"]["epoch"] > resumed]
    assert rewinds == [{"phase": "train", "epoch": resumed}] if doomed else len(rewinds) <= 1
    assert whole[-1]["event"] == "status" and whole[-1]["data"]["status"] == "cancelled"

    inputs, targets = nn.generate("xor", 500, 0, 1)
    plan = nn.build(flow.XOR_NET, {**flow.XOR_TRAINING, "epochs": trained},
                    nn.describe(inputs, targets))
    unbroken = nn.weights_to_json(nn.train(plan, inputs, targets).weights)["layers"]
    served = api.get(f"/v1/runs/{run_id}/weights")["layers"]
    assert served == unbroken  # bit for bit: JSON round-trips floats exactly


def test_open_streams_do_not_hold_the_api_at_sigterm(api: flow.Api, procs: Procs) -> None:
    """gunicorn gives requests in flight graceful_timeout to finish; an event stream would
    use all of it. SIGTERM ends the streams at once instead (the client sees a clean end and
    resumes elsewhere from its Last-Event-ID), and the API exits without forcing them."""
    run_id = flow.start_run(api, flow.create_xor(api), training={"epochs": 100_000})["id"]
    follows = [flow.Follow(api, run_id) for _ in range(3)]
    procs.wait_for("the streams to send", lambda: all(f.got for f in follows), 30)
    assert procs.stop("api", signal.SIGTERM) == 0
    for follow in follows:
        assert follow.join()[-1]["event"] in ("status", "epoch")  # ended, no error
    assert "graceful timeout" not in procs.report("api", lines=10_000)
    procs.start("api", command("api", **{"0.0.0.0:8000": api.base.removeprefix("http://")}))
    procs.wait_http(f"{api.base}/readyz")  # for the fixture's teardown check
    api.post(f"/v1/runs/{run_id}/cancel", {})


def _checkpoint_epoch(engine: sa.Engine, run_id: str) -> int | None:
    """The epoch of the run's stored checkpoint (None before the first)."""
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT epoch FROM artifacts WHERE run_id = :id "
                                   "AND kind = 'checkpoint'"), {"id": run_id})
