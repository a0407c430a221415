"""The deployment end to end: docker-compose.yml's commands as processes, on PostgreSQL and
Redis, isolated from any dev server by their own database, Redis key prefix and queue."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import requests
import sqlalchemy as sa

import nn
from service import statstore
from tests.conftest import PG_ADMIN_URL, REDIS_URL, free_port
from tests.e2e import flow
from tests.e2e.compose import command, environment, healthcheck
from tests.procs import Procs
from tests.servers import Certs, Server
from worker.health import TOUCH_SECONDS

HEARTBEAT = "/tmp/backprop-heartbeat"  # docker-compose.yml's BACKPROP_HEARTBEAT_FILE


def deploy(procs: Procs, db_url: str, prefix: str, password: str = "",
           worker_file: str = "docker-compose.yml", paths: dict[str, str] | None = None,
           others: tuple[str, ...] = ("worker", "webhooks", "beat"), **settings: object
           ) -> flow.Api:
    """migrate, then api, worker, webhooks and beat as docker-compose.yml runs them (the worker as
    `worker_file` does), each with its compose environment, the containers' paths and ports
    replaced by this test's (`paths` adds more), and `settings` as BACKPROP_* variables
    (BROKER_URL among them: the machine's Redis unless given, or BROKER_URL_FILE). The
    database password is `password` (none: ""), read from a file as in the containers.
    `others`: the services started beside the api."""
    files = procs.log_dir.parent
    (files / "db_password").write_text(password + "\n")
    port, metrics_port = free_port(), free_port()
    paths = {"/run/secrets/db_password": str(files / "db_password"), "9100": str(metrics_port),
             **(paths or {})}
    if "BROKER_URL_FILE" not in settings:
        settings.setdefault("BROKER_URL", REDIS_URL)
    procs.env.update(
        environment("migrate", **paths),  # what every service of the image has
        BACKPROP_DATABASE_URL=db_url, BACKPROP_BROKER_KEYPREFIX=prefix,
        BACKPROP_QUEUE=f"backprop-{uuid.uuid4().hex[:8]}",
        **{f"BACKPROP_{k}": str(v) for k, v in settings.items()},
    )

    def env(service: str, file: str = "docker-compose.yml") -> dict[str, str]:
        return environment(service, file, **paths,
                           **{HEARTBEAT: str(files / f"{service}.heartbeat")})

    procs.run("migrate", command("migrate"), env=env("migrate"))
    key = flow.create_key(procs, "e2e")  # the API is called as a tenant made by the CLI
    procs.start("api", command("api", **{"0.0.0.0:8000": f"127.0.0.1:{port}",
                                         "0.0.0.0:9100": f"127.0.0.1:{metrics_port}"}),
                env=env("api"))
    for name in others:
        file = worker_file if name == "worker" else "docker-compose.yml"
        procs.start(name, command(name, file), env=env(name, file))
    base = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{base}/readyz")
    return flow.Api(base, key)


def binds(procs: Procs) -> list[str]:
    """The api's base URLs, as it was started: the public one, then the metrics one."""
    argv = procs.procs["api"].args
    return [f"http://{a}" for before, a in zip(argv, argv[1:]) if before == "--bind"]


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
    however fast the machine trains.) An event stream followed throughout, and one resumed
    from its Last-Event-ID after the takeover, each leave their client with exactly those
    epochs: the rows the dead worker wrote past its checkpoint are taken back by a rewind."""
    # Rows are flushed ten times between checkpoints, so that the stream has some past the
    # checkpoint when the worker dies.
    api = deploy(procs, pg_url, redis_prefix, LEASE_SECONDS=2, RECONCILE_SECONDS=1,
                 CHECKPOINT_SECONDS=1, FLUSH_SECONDS=0.1, RUN_MAX_STATS_EPOCHS=20)
    run = flow.start_run(api, flow.create_xor(api), training={"epochs": 100_000})
    run_id, thinned_after = run["id"], run["stats_thinned_after"]
    assert thinned_after == statstore.thinned_after(100_000, 20) == 2
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
    stats = api.get(f"/v1/runs/{run_id}/layer-stats", params={"layer": 0, "limit": 1000})
    kept = [e for e in range(1, trained + 1) if statstore.kept(e, thinned_after)]
    assert [s["epoch"] for s in stats["items"]] == kept + ([] if kept[-1] == trained
                                                           else [trained])

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


def test_the_health_checks_and_the_metrics_port(pg_url: str, redis_prefix: str,
                                                procs: Procs) -> None:
    """Every health check of docker-compose.yml, run against the processes: each passes. The
    worker's and beat's fail once their heartbeat is a minute old, stay failing while the
    worker's main loop is stopped, and pass again once it runs. GET /metrics answers on the
    metrics port only."""
    api = deploy(procs, pg_url, redis_prefix)
    public, metrics = binds(procs)
    files = procs.log_dir.parent
    pg = sa.engine.make_url(PG_ADMIN_URL)
    env = {**os.environ, "PGHOST": str(pg.host), "PGPORT": str(pg.port or 5432)}
    replace = {"api": {"127.0.0.1:8000": public.removeprefix("http://")},
               **{s: {HEARTBEAT: str(files / f"{s}.heartbeat")}
                  for s in ("worker", "webhooks", "beat")}}

    def healthy(service: str) -> bool:
        argv = healthcheck(service, **replace.get(service, {}))
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0

    for service in ("postgres", "redis", "api", "worker", "webhooks", "beat"):
        procs.wait_for(f"{service}'s health check to pass", lambda: healthy(service), 30)

    for service in ("worker", "beat"):
        pid = procs.procs[service].pid
        os.killpg(pid, signal.SIGSTOP)  # or it may touch the file between the next two lines
        try:
            os.utime(files / f"{service}.heartbeat", (time.time() - 120,) * 2)
            assert not healthy(service)
        finally:
            os.killpg(pid, signal.SIGCONT)
        procs.wait_for(f"{service} to touch its heartbeat", lambda: healthy(service),
                       3 * TOUCH_SECONDS)
    worker = procs.procs["worker"].pid
    os.killpg(worker, signal.SIGSTOP)  # a stuck worker: its loop touches nothing
    try:
        os.utime(files / "worker.heartbeat", (time.time() - 120,) * 2)
        time.sleep(2 * TOUCH_SECONDS)
        assert not healthy("worker")
    finally:
        os.killpg(worker, signal.SIGCONT)
    procs.wait_for("the worker to be healthy again", lambda: healthy("worker"), 3 * TOUCH_SECONDS)

    assert requests.get(f"{public}/metrics", timeout=10).status_code == 404
    assert api.get("/v1/runs")["items"] == []  # the public port serves the API
    scraped = requests.get(f"{metrics}/metrics", timeout=10)
    assert scraped.status_code == 200 and "backprop_runs{" in scraped.text


def test_a_worker_on_another_machine_over_tls(tls_postgres: Server, tls_redis: Server,
                                             certs: Certs, procs: Procs) -> None:
    """docker-compose.worker.yml's worker, with its environment (secrets as files), against a
    PostgreSQL that takes only TLS with a scram password and a Redis that takes only TLS
    with a client certificate and a password: it trains a run end to end (the API, beat and
    migration run as on the main host, over TLS too). A wrong password stops the
    migration; a plain connection is refused by both servers."""
    files = procs.log_dir.parent
    broker_url = f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0"
    (files / "broker_url").write_text(broker_url + "\n")
    db_url = (f"postgresql+psycopg://backprop@127.0.0.1:{tls_postgres.port}/backprop"
              f"?sslmode=verify-full&sslrootcert={certs.ca}")

    procs.env.update(BACKPROP_DATABASE_URL=db_url, BACKPROP_DATABASE_PASSWORD="wrong")
    done = subprocess.run(command("migrate"), cwd=procs.cwd, env=procs.env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "password authentication failed" in done.stderr
    del procs.env["BACKPROP_DATABASE_PASSWORD"]
    plain = sa.create_engine(db_url.replace("verify-full", "disable"),
                             connect_args={"password": tls_postgres.password})
    with pytest.raises(sa.exc.OperationalError, match="no encryption"):
        plain.connect()
    plain.dispose()
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        redis.Redis(port=tls_redis.port, password=tls_redis.password, socket_timeout=2).ping()

    api = deploy(procs, db_url, "tls:", password=tls_postgres.password,
                 worker_file="docker-compose.worker.yml",
                 paths={"/run/secrets/broker_url": str(files / "broker_url"),
                        "/run/secrets/ca.crt": str(certs.ca),
                        "/run/secrets/client.crt": str(certs.client),
                        "/run/secrets/client.key": str(certs.client_key)},
                 BROKER_URL_FILE=files / "broker_url", BROKER_SSL_CA_CERTS=certs.ca,
                 BROKER_SSL_CERTFILE=certs.client, BROKER_SSL_KEYFILE=certs.client_key)
    run = flow.start_run(api, flow.create_xor(api), training={"epochs": 20})
    done = flow.wait_until(api, procs, run["id"])
    assert done["status"] == "succeeded", done
    assert f"run {run['id']}: claimed by" in procs.report("worker", lines=1_000_000)
    procs.check()


def test_open_streams_do_not_hold_the_api_at_sigterm(api: flow.Api, procs: Procs) -> None:
    """gunicorn gives requests in flight graceful_timeout to finish; an event stream would
    use all of it. SIGTERM ends the streams at once instead (the client sees a clean end and
    resumes elsewhere from its Last-Event-ID), and the API exits without forcing them."""
    run_id = flow.start_run(api, flow.create_xor(api), training={"epochs": 100_000})["id"]
    follows = [flow.Follow(api, run_id) for _ in range(3)]
    procs.wait_for("the streams to send", lambda: all(f.got for f in follows), 30)
    public, metrics = binds(procs)
    assert procs.stop("api", signal.SIGTERM) == 0
    for follow in follows:
        assert follow.join()[-1]["event"] in ("status", "epoch")  # ended, no error
    assert "graceful timeout" not in procs.report("api", lines=10_000)
    procs.start("api", command("api", **{"0.0.0.0:8000": public.removeprefix("http://"),
                                         "0.0.0.0:9100": metrics.removeprefix("http://")}))
    procs.wait_http(f"{api.base}/readyz")  # for the fixture's teardown check
    api.post(f"/v1/runs/{run_id}/cancel", {})


def _checkpoint_epoch(engine: sa.Engine, run_id: str) -> int | None:
    """The epoch of the run's stored checkpoint (None before the first)."""
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT epoch FROM artifacts WHERE run_id = :id "
                                   "AND kind = 'checkpoint'"), {"id": run_id})


class _Times:
    """When each answer of a cheap request, or each keep-alive of an event stream, arrived:
    read on a thread of its own until `stop`."""

    def __init__(self, api: flow.Api, path: str, stream: bool) -> None:
        self.at: list[float] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.http = requests.Session()
        self.http.headers.update(api.http.headers)
        target = self._stream if stream else self._poll
        self.thread = threading.Thread(target=target, args=(api.base + path,), daemon=True)
        self.thread.start()

    def _poll(self, url: str) -> None:
        try:
            while not self.stop.is_set():
                assert self.http.get(url, timeout=60).status_code == 200
                self.at.append(time.monotonic())
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def _stream(self, url: str) -> None:
        try:
            with self.http.get(url, stream=True, timeout=(10, 60)) as answer:
                assert answer.status_code == 200, answer.text[:500]
                for line in answer.iter_lines():
                    if line.startswith(b": keep-alive"):
                        self.at.append(time.monotonic())
                    if self.stop.is_set():
                        return
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def during(self, start: float, end: float) -> list[float]:
        self.stop.set()
        self.thread.join(30)
        assert self.error is None, self.error
        return [t for t in self.at if start <= t <= end]


def test_heavy_requests_leave_the_loop_to_the_others(pg_url: str, redis_prefix: str,
                                                     procs: Procs) -> None:
    """One gevent worker: while it reads a large data set from JSON (parsing, the schema's
    walk, the arrays, the npz: seconds of CPU), an event stream it serves keeps getting its
    keep-alives and a cheap request keeps being answered, in the same process: the work runs
    in a thread pool (service/offload.py), not on the loop that serves them. And the
    master imported nothing before the worker patched (no MonkeyPatchWarning)."""
    api = deploy(procs, pg_url, redis_prefix, others=(), EVENTS_KEEPALIVE_SECONDS=0.2)
    argv = procs.procs["api"].args
    procs.stop("api")
    argv[argv.index("--workers") + 1] = "1"
    procs.start("api", argv)
    procs.wait_http(f"{api.base}/readyz")
    run_id = flow.start_run(api, flow.create_xor(api))["id"]  # queued: no worker here
    rng = np.random.default_rng(0)
    rows = 300_000
    body = json.dumps({"name": "large", "inputs": rng.normal(size=(rows, 2)).tolist(),
                       "targets": rng.integers(0, 2, rows).tolist()})
    stream = _Times(api, f"/v1/runs/{run_id}/events", stream=True)
    cheap = _Times(api, f"/v1/runs/{run_id}", stream=False)
    procs.wait_for("a keep-alive", lambda: stream.at, 10)
    start = time.monotonic()
    answer = api.http.post(f"{api.base}/v1/datasets", data=body, timeout=300,
                           headers={"Content-Type": "application/json"})
    end = time.monotonic()
    assert answer.status_code == 201, answer.text[:500]
    assert answer.json()["n_samples"] == rows
    took = end - start
    for name, times in (("keep-alives", stream.during(start, end)),
                        ("cheap answers", cheap.during(start, end))):
        gaps = np.diff([start, *times, end])
        assert len(times) >= 3 and gaps.max() < took / 2, (
            f"{name}: {len(times)} in the {took:.1f} s of the upload, the longest wait "
            f"{gaps.max():.2f} s")
    body = json.dumps({"name": "bad", "inputs": [[0.5, 0.5]] * 9_999 + [[0.5, "x"]],
                       "targets": [0] * 10_000})  # read in the pool too: its 422 comes back
    answer = api.http.post(f"{api.base}/v1/datasets", data=body, timeout=60,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text[:500]
    assert [e["path"] for e in answer.json()["errors"]] == ["inputs[9999][1]"]
    log = procs.report("api", lines=10_000)
    assert "MonkeyPatchWarning" not in log
    assert "Traceback" not in log  # the 422 was not printed as an error on its way back
