"""The deployment end to end: docker-compose.yml's commands as processes, on PostgreSQL and
Redis, isolated from any dev server by their own database, Redis key prefix and queue."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest

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
    expires and resumes from the checkpoint, to exactly the weights of an unbroken run."""
    api = deploy(procs, pg_url, redis_prefix, LEASE_SECONDS=2, RECONCILE_SECONDS=1,
                 CHECKPOINT_SECONDS=1)
    run = flow.start_run(api, flow.create_xor(api))
    procs.wait_for("a checkpoint and some epochs", lambda: api.get(
        f"/v1/runs/{run['id']}")["epochs_completed"] >= 60, flow.RUN_SECONDS)
    procs.stop("worker", signal.SIGKILL)
    procs.start("worker", command("worker"))

    done = flow.wait_until(api, procs, run["id"])
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done
    epochs = api.get(f"/v1/runs/{run['id']}/epochs", params={"limit": 1000})["items"]
    assert [e["epoch"] for e in epochs] == list(range(1, 201))  # each exactly once

    inputs, targets = nn.generate("xor", 500, 0, 1)
    plan = nn.build(flow.XOR_NET, flow.XOR_TRAINING, nn.describe(inputs, targets))
    unbroken = nn.weights_to_json(nn.train(plan, inputs, targets).weights)["layers"]
    served = api.get(f"/v1/runs/{run['id']}/weights")["layers"]
    assert served == unbroken  # bit for bit: JSON round-trips floats exactly
