"""Faults against the real processes (docker-compose.yml's commands), PostgreSQL and Redis.

A worker shut down, paused past its lease, sent a run twice; Redis restarted (our own
redis-server, append-only as in deployment); the database's connections cut and the database
gone for longer than a lease; cancel, timeout, divergence and a data set that no longer loads
through the whole stack; twenty runs at once. (A SIGKILLed worker: test_deployment.py.)

The checks read the database directly where the API cannot answer (the database is down) or
does not tell (lease tokens, checkpoints, which process wrote what).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

import nn
from service import create_app
from service.models import utcnow
from service.queue import send_run
from tests.conftest import PG_ADMIN_URL, free_port
from tests.e2e import flow, load
from tests.e2e.compose import command
from tests.e2e.test_deployment import binds, deploy
from tests.procs import Procs

# Short leases and quick reconciling, so that a takeover takes seconds.
FAST = {"LEASE_SECONDS": 2, "RECONCILE_SECONDS": 1, "CHECKPOINT_SECONDS": 1,
        "REQUEUE_AFTER_SECONDS": 2}
# A run that trains until it is cancelled (per-sample SGD on 400 samples, a checkpoint
# about every second), so that no phase of a test depends on how fast the machine trains.
LONG = {"epochs": 100_000}


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    """The deployment's database, for the checks."""
    engine = sa.create_engine(pg_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


def row(engine: sa.Engine, run_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM runs WHERE id = :id"), {"id": run_id}).one()


def epochs(engine: sa.Engine, run_id: str) -> list[tuple[int, float]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT e.epoch, e.train_loss FROM epochs e JOIN runs r ON r.seq = e.run_seq "
            "WHERE r.id = :id AND e.phase = 1 ORDER BY e.epoch"), {"id": run_id})]  # 1: train


def artifacts(engine: sa.Engine, run_id: str) -> dict[str, tuple[int, Any, bytes]]:
    with engine.connect() as conn:
        return {r.kind: (r.epoch, r.created_at, bytes(r.data)) for r in conn.execute(sa.text(
            "SELECT kind, epoch, created_at, data FROM artifacts WHERE run_id = :id"),
            {"id": run_id})}


def wait_row(procs: Procs, engine: sa.Engine, run_id: str, what: str, test: Any,
             timeout: float = flow.RUN_SECONDS) -> Any:
    def probe() -> Any:
        r = row(engine, run_id)
        return r if test(r) else None

    return procs.wait_for(what, probe, timeout)


def wait_log(procs: Procs, name: str, text: str, timeout: float = 30) -> None:
    procs.wait_for(f"{text!r} in {name}'s log",
                   lambda: text in procs.report(name, lines=1_000_000), timeout, interval=0.2)


def json_lines(procs: Procs, name: str) -> list[dict[str, Any]]:
    """The log's JSON lines (Celery also prints a banner, which is not a log line), each
    with at least ts, level, logger and message."""
    lines = [json.loads(line) for line in procs.report(name, lines=1_000_000).splitlines()
             if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    return lines


def pool_parent(worker_column: str) -> int:
    """The Celery main process of the pool process named in runs.worker ("host:pid")."""
    pid = int(worker_column.rsplit(":", 1)[1])
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def which_worker(procs: Procs, worker_column: str) -> str:
    parent = pool_parent(worker_column)
    (name,) = [n for n, p in procs.procs.items() if p.pid == parent]
    return name


def start_worker(procs: Procs, name: str, *, wait: bool = True) -> None:
    procs.start(name, command("worker"))
    if wait:
        wait_log(procs, name, "ready.")


@pytest.fixture
def up(pg_url: str, redis_prefix: str, procs: Procs) -> Iterator[Any]:
    """`up(**settings)`: the deployment (api, worker, beat), and its API called with a key."""
    def start(**settings: Any) -> flow.Api:
        return deploy(procs, pg_url, redis_prefix, **settings)

    yield start
    procs.check()  # no process died along the way


def test_a_worker_told_to_stop_hands_its_run_back(
    up: Any, procs: Procs, engine: sa.Engine,
) -> None:
    """SIGTERM to the Celery main process (what `docker stop` sends): the run stops at its
    next checkpoint, is written and queued again, and the worker exits at once; another
    worker resumes it without waiting for a lease. (That the resumed run ends exactly as an
    unbroken one: tests/worker/test_faults.py.)"""
    api = up(LOG_FORMAT="json", **FAST)
    run_id = flow.start_run(api, flow.create_xor(api), training=LONG)["id"]
    wait_row(procs, engine, run_id, "some epochs", lambda r: r.epochs_completed >= 30)
    answer = api.call("GET", f"/v1/runs/{run_id}", 200, headers={"X-Request-ID": "req-42"})
    assert answer.headers["X-Request-ID"] == "req-42"
    worker = procs.procs["worker"]
    worker.send_signal(signal.SIGTERM)  # the main process only, as Docker does
    assert worker.wait(timeout=30) == 0, procs.report("worker")

    run = row(engine, run_id)
    assert (run.status, run.lease_token, run.attempts) == ("queued", None, 0), run
    stored = artifacts(engine, run_id)["checkpoint"][0]
    assert stored == run.epochs_completed > 0  # stopped where its checkpoint is
    assert [e for e, _ in epochs(engine, run_id)] == list(range(1, stored + 1))
    # Every process logs JSON lines, with the ids it knows.
    worker_lines = json_lines(procs, "worker")
    assert any(line["message"].startswith(f"run {run_id}: handed back to the queue")
               and line["run_id"] == run_id and line["dataset_id"] for line in worker_lines)
    # Celery's line for the task's end says that it did not end the run, not "succeeded".
    ended = [line for line in worker_lines if line["logger"] == "celery.app.trace"
             and line["message"].startswith("Task backprop.train_run[")]
    assert [(line["message"].rsplit(" ", 1)[1], line["data"]["exc"]) for line in ended] == [
        ("ignored", "Ignore('handed_back')")], ended
    assert any(line.get("request_id") == "req-42" and line.get("run_id") == run_id
               and line["logger"] == "service.requests" for line in json_lines(procs, "api"))
    assert any(line["logger"].startswith("gunicorn") for line in json_lines(procs, "api"))
    assert any(line["logger"].startswith("celery") for line in json_lines(procs, "beat"))

    started = time.monotonic()
    start_worker(procs, "worker2")
    wait_row(procs, engine, run_id, "the second worker to resume it",
             lambda r: r.epochs_completed > stored + 10, timeout=15)
    assert time.monotonic() - started < 15  # no lease to wait for
    assert any(line["message"] == f"run {run_id}: claimed by {row(engine, run_id).worker} "
               f"(attempt 1, from epoch {stored})" for line in json_lines(procs, "worker2"))
    api.post(f"/v1/runs/{run_id}/cancel", {})
    done = flow.wait_until(api, procs, run_id, timeout=30)
    assert (done["status"], done["attempts"]) == ("cancelled", 1), done
    assert [e for e, _ in epochs(engine, run_id)] == list(range(1, done["epochs_completed"] + 1))


def test_a_duplicate_message_and_a_paused_worker_train_nothing_twice(
    up: Any, procs: Procs, engine: sa.Engine,
) -> None:
    """The run's message sent twice to two idle workers: one trains it, the other drops
    its copy. Then the training worker is paused (SIGSTOP) past its lease: the other one
    takes the run over from the checkpoint (and is cancelled, to end the run). Woken
    (SIGCONT), the paused one finds its fence gone and writes nothing: the rows and the
    weights stay the second worker's."""
    api = up(**FAST)
    start_worker(procs, "worker2")
    run_id = flow.start_run(api, flow.create_xor(api), training=LONG)["id"]
    app = create_app({name: procs.env[f"BACKPROP_{name}"]
                      for name in ("DATABASE_URL", "BROKER_URL", "BROKER_KEYPREFIX", "QUEUE")})
    with app.app_context():
        send_run(run_id)  # the same task delivered twice
    procs.wait_for("a worker to drop the second message", lambda: any(
        f"run {run_id}: not claimable (dropped)" in procs.report(name, lines=1_000_000)
        for name in ("worker", "worker2")), 30, interval=0.2)

    first = wait_row(procs, engine, run_id, "a checkpoint", lambda r: r.epochs_completed >= 40
                     and "checkpoint" in artifacts(engine, run_id))
    paused = which_worker(procs, first.worker)
    other = "worker2" if paused == "worker" else "worker"
    group = procs.procs[paused].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        taken = wait_row(procs, engine, run_id, "the other worker to take it over",
                         lambda r: r.attempts == 2 and r.epochs_completed > first.epochs_completed)
        assert which_worker(procs, taken.worker) == other
        api.post(f"/v1/runs/{run_id}/cancel", {})
        done = wait_row(procs, engine, run_id, "the run to end",
                        lambda r: r.status in flow.FINISHED)
        before = (done, epochs(engine, run_id), artifacts(engine, run_id))
    finally:
        os.killpg(group, signal.SIGCONT)
    wait_log(procs, paused, f"run {run_id}: lease lost")
    time.sleep(1)  # anything it would still write, it would have written by now
    assert (row(engine, run_id), epochs(engine, run_id), artifacts(engine, run_id)) == before
    assert (done.status, done.attempts) == ("cancelled", 2)
    assert [e for e, _ in before[1]] == list(range(1, done.epochs_completed + 1))
    assert before[2]["final"][0] == done.epochs_completed  # the second worker's weights


def _redis(procs: Procs, port: int, folder: Path) -> None:
    """Our own redis-server, append-only as in docker-compose.yml."""
    procs.start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                          "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                          "--dir", str(folder)])
    def answers() -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    procs.wait_for("redis to answer", answers, 10, interval=0.1)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_runs_survive_redis_restarts(
    up: Any, procs: Procs, engine: sa.Engine, tmp_path: Path,
) -> None:
    """Redis restarted while two runs train and four wait in its queue: once cleanly (its
    append-only file keeps the messages), then losing everything. The workers and beat
    reconnect, the reconciler republishes what was lost, and every run ends, trained once."""
    port, folder = free_port(), tmp_path / "redis"
    folder.mkdir()
    _redis(procs, port, folder)
    api = up(BROKER_URL=f"redis://127.0.0.1:{port}/0", **FAST)
    start_worker(procs, "worker2")
    dataset_id = flow.create_xor(api)
    long = [flow.start_run(api, dataset_id, training=LONG)["id"] for _ in range(2)]
    for run_id in long:
        wait_row(procs, engine, run_id, "both workers training", lambda r: r.status == "running")
    short = [flow.start_run(api, dataset_id, training={"epochs": 30})["id"] for _ in range(4)]
    queue = f"{procs.env['BACKPROP_BROKER_KEYPREFIX']}{procs.env['BACKPROP_QUEUE']}"
    client = redis.Redis(port=port)

    def waiting() -> set[str]:
        """The short runs whose message is in the queue (beat's reconcile messages too)."""
        messages = b" ".join(client.lrange(queue, 0, -1)).decode()
        return {i for i in short if i in messages}

    try:
        assert waiting() == set(short)  # both workers are busy: the short runs wait
        procs.stop("redis")  # SIGTERM: Redis writes its append-only file and exits
        _redis(procs, port, folder)
        assert waiting() == set(short)  # and reads it back
        # The workers reconnect (beat does too: its reconcile messages republish below).
        for name in ("worker", "worker2"):
            procs.wait_for(f"{name} to reconnect", lambda n=name: procs.report(
                n, lines=1_000_000).count("Connected to redis") >= 2, 30, interval=0.2)

        procs.stop("redis", signal.SIGKILL)  # this time its data is gone
        shutil.rmtree(folder)
        folder.mkdir()
        _redis(procs, port, folder)
        assert waiting() == set()
    finally:
        client.close()
    assert all(row(engine, i).status == "queued" for i in short)

    for run_id in long:  # free the workers: the reconciler republishes the short runs
        api.post(f"/v1/runs/{run_id}/cancel", {})
    procs.wait_for("every run to end", lambda: all(
        row(engine, i).status in flow.FINISHED for i in long + short), 60, interval=0.5)
    for run_id in long + short:
        run = row(engine, run_id)
        assert (run.status, run.attempts) == (
            "cancelled" if run_id in long else "succeeded", 1), run
        assert [e for e, _ in epochs(engine, run_id)] == list(range(1, run.epochs_completed + 1))
    assert all(row(engine, i).epochs_completed == 30 for i in short)


class Outage:
    """Cuts the deployment's database off, as a restart or a failover does: every
    connection killed, and new ones refused while it lasts."""

    def __init__(self, pg_url: str) -> None:
        self.name = sa.engine.make_url(pg_url).database
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def kill(self) -> int:
        with self.admin.connect() as conn:
            return len(conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db "
                "AND pid <> pg_backend_pid()"), {"db": self.name}).all())

    def allow(self, allowed: bool) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS '
                                 f'{"true" if allowed else "false"}'))

    def down_for(self, seconds: float) -> None:
        self.allow(False)
        try:
            self.kill()
            time.sleep(seconds)
        finally:
            self.allow(True)

    def close(self) -> None:
        self.allow(True)
        self.admin.dispose()


def test_runs_survive_cut_database_connections(
    up: Any, procs: Procs, engine: sa.Engine, pg_url: str,
) -> None:
    """Every connection killed again and again, then the database gone for less than a
    lease: the worker keeps its rows and writes them once it can (one attempt). Then gone
    for longer than a lease: the worker gives the run up, and once the database is back the
    reconciler requeues it and it resumes from its checkpoint. Nothing committed is lost
    and no epoch is written twice. (A long run, cancelled at the end: how fast the machine
    trains must not decide which phase the run is in.)"""
    api = up(LEASE_SECONDS=3, FLUSH_SECONDS=0.2, RECONCILE_SECONDS=1, CHECKPOINT_SECONDS=1,
             REQUEUE_AFTER_SECONDS=2)
    run_id = flow.start_run(api, flow.create_xor(api), training={"epochs": 100_000})["id"]
    wait_row(procs, engine, run_id, "a checkpoint", lambda r: r.epochs_completed >= 20
             and "checkpoint" in artifacts(engine, run_id))
    outage = Outage(pg_url)
    try:
        killed = 0
        for _ in range(30):  # 3 s of connections killed under the worker's flushes
            killed += outage.kill()
            time.sleep(0.1)
        assert killed > 0
        outage.down_for(1.5)  # shorter than the lease
        back = utcnow()
        engine.dispose()
        run = wait_row(procs, engine, run_id, "the worker to write again",
                       lambda r: r.heartbeat_at > back, timeout=10)
        assert (run.status, run.attempts) == ("running", 1)  # it kept the run
        committed = epochs(engine, run_id)
        assert [e for e, _ in committed] == list(range(1, run.epochs_completed + 1))
        wait_log(procs, "worker", "database write failed")
        outage.down_for(3 + 2.5)  # longer than the lease
        engine.dispose()
    finally:
        outage.close()
    wait_log(procs, "worker", "giving the run up")
    run = wait_row(procs, engine, run_id, "the run to be resumed",
                   lambda r: r.attempts == 2 and r.epochs_completed > len(committed) + 20)
    assert run.status == "running"

    api.post(f"/v1/runs/{run_id}/cancel", {})
    run = wait_row(procs, engine, run_id, "the run to end", lambda r: r.status in flow.FINISHED)
    assert (run.status, run.attempts) == ("cancelled", 2), run
    rows = epochs(engine, run_id)
    assert [e for e, _ in rows] == list(range(1, run.epochs_completed + 1))
    assert rows[:len(committed)] == committed  # what was committed is still there, unchanged


def test_cancel_timeout_divergence_and_bad_data_end_in_their_states(
    up: Any, procs: Procs, engine: sa.Engine,
) -> None:
    """Through the whole stack, with two workers: a cancelled run stops within about a
    second and keeps its weights, not its checkpoint (nothing trains a finished run again);
    a run over RUN_TIME_LIMIT_SECONDS fails with "timeout" and keeps its weights likewise;
    a diverging one with "diverged"; one whose data set no longer loads with
    "invalid_data"."""
    api = up(RUN_TIME_LIMIT_SECONDS=5, CHECKPOINT_SECONDS=1)
    start_worker(procs, "worker2", wait=False)
    xor, broken = flow.create_xor(api), flow.create_xor(api)
    inputs, labels = nn.generate("xor", 100, 0, 1)
    regression = api.post("/v1/datasets", {"name": "big targets", "inputs": inputs.tolist(),
                                           "targets": (labels * 10.0).tolist()}, 201)["id"]
    wait_log(procs, "worker2", "ready.")

    # The longest run the time estimate lets through (its 422 says how many epochs fit): the
    # estimate is a little optimistic and leaves the worker's own work out, so such a run
    # still outlasts the limit, and the worker stops it.
    refused = api.post("/v1/runs", {"dataset_id": xor, "network": flow.XOR_NET, "training": {
        **flow.XOR_TRAINING, "epochs": 100_000}}, 422)["errors"][0]
    assert refused["path"] == "training.epochs", refused
    long = {"epochs": int(refused["message"].split("at most ")[1].split(" epochs fit")[0])}
    cancel_id = flow.start_run(api, xor, training=long)["id"]
    timeout_id = flow.start_run(api, xor, training=long)["id"]
    for run_id in (cancel_id, timeout_id):
        wait_row(procs, engine, run_id, "both long runs training",
                 lambda r: r.epochs_completed > 0)
    # Queued behind them: a diverging run, and one whose data set is broken meanwhile.
    relu = {"layers": [{"type": "dense", "units": 4, "activation": "relu"},
                       {"type": "dense", "units": 1, "activation": "linear"}]}
    diverge_id = api.post("/v1/runs", {"dataset_id": regression, "network": relu, "training": {
        "loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 5.0},
        "epochs": 50}}, 202)["id"]
    broken_id = flow.start_run(api, broken)["id"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE datasets SET data = :junk WHERE id = :id"),
                     {"junk": b"not an npz", "id": broken})

    wait_row(procs, engine, cancel_id, "a checkpoint of the run to cancel",
             lambda r: "checkpoint" in artifacts(engine, cancel_id))
    asked = time.monotonic()
    api.post(f"/v1/runs/{cancel_id}/cancel", {})
    cancelled = flow.wait_until(api, procs, cancel_id, timeout=30)
    took = time.monotonic() - asked
    assert cancelled["status"] == "cancelled" and took < 3, (cancelled, took)
    assert set(artifacts(engine, cancel_id)) == {"final"}
    assert len(api.get(f"/v1/runs/{cancel_id}/weights")["layers"]) == 2

    outcomes = {run_id: flow.wait_until(api, procs, run_id)
                for run_id in (timeout_id, diverge_id, broken_id)}
    codes = {run_id: (r["status"], (r["error"] or {}).get("code"))
             for run_id, r in outcomes.items()}
    assert codes == {timeout_id: ("failed", "timeout"), diverge_id: ("failed", "diverged"),
                     broken_id: ("failed", "invalid_data")}, codes
    assert outcomes[timeout_id]["epochs_completed"] > 0
    assert set(artifacts(engine, timeout_id)) == {"final"}


def test_a_run_past_its_memory_limit_fails_and_the_worker_lives_on(
    up: Any, procs: Procs, engine: sa.Engine,
) -> None:
    """A run that needs far more than the worker's WORKER_MEMORY_LIMIT_BYTES fails with
    out_of_memory, not internal_error nor worker_lost: the allocation fails inside the pool
    process, the worker's main process is the same one, and the next run trains on it."""
    api = up(WORKER_MEMORY_LIMIT_BYTES=flow.SMALL_MEMORY_LIMIT)
    worker = procs.procs["worker"]
    failed = flow.run_out_of_memory(api, procs)
    assert failed["attempts"] == 1 and failed["epochs_completed"] == 0

    run_id = flow.start_run(api, flow.create_xor(api))["id"]
    assert flow.wait_until(api, procs, run_id)["status"] == "succeeded"
    assert worker.poll() is None
    assert pool_parent(row(engine, run_id).worker) == worker.pid  # the same main process
    assert pool_parent(row(engine, failed["id"]).worker) == worker.pid


def test_twenty_runs_at_once_on_two_workers(up: Any, procs: Procs, engine: sa.Engine) -> None:
    """None lost, none trained twice (bench/load.py does 200 and measures)."""
    api = up(TENANT_MAX_ACTIVE_RUNS=1000)
    start_worker(procs, "worker2")
    outcome = load.run_load(api, procs, engine, 20, timeout=120)
    load.check(outcome)
    assert {which_worker(procs, w) for (w,) in _workers(engine)} == {"worker", "worker2"}

    # /metrics (on its port), whichever gunicorn worker answers: the rows' numbers, and the
    # requests counted by every API process (prometheus-client's multiprocess mode).
    scraper = flow.Api(binds(procs)[1])
    for _ in range(3):
        text = scraper.call("GET", "/metrics", 200).text
        got = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
        assert got[("backprop_runs", (("status", "succeeded"),))] == 20
        assert got[("backprop_queue_wait_seconds_gcount", ())] == 20
        assert got[("backprop_epoch_duration_seconds_gcount", ())] == 20 * 30
        assert got[("backprop_http_requests_total", (
            ("endpoint", "runs.create"), ("method", "POST"), ("status", "202")))] == 20


def _workers(engine: sa.Engine) -> list[tuple[str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT DISTINCT worker FROM runs "
                                                       "WHERE worker IS NOT NULL"))]
