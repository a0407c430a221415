"""The embedded default end to end: `backprop up` in an empty folder, SQLite and kombu's
filesystem broker under it, no server to install; what it prints, what it keeps running,
and that nothing of it outlives it, whether Ctrl-C or SIGKILL stops it."""

from __future__ import annotations

import os
import signal
import stat
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.e2e import flow
from tests.procs import BIN, Procs, children, marked


def test_backprop_up(procs: Procs, tmp_path: Path) -> None:
    api, printed = flow.start_up(procs, tmp_path)
    assert (tmp_path / "var" / "backprop.db").exists()

    # The local tenant's key: kept private in var/api-key, and printed.
    key_file = tmp_path / "var" / "api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert api.key is not None and api.key in printed
    flow.Api(api.base).call("GET", "/v1/datasets", 401)

    # It printed little: its own lines only (no banner, no warning of Celery's or
    # gunicorn's), the last ones the URL, the key and how to stop. The logs are in files.
    lines = [line for line in printed.splitlines() if line.strip()]
    assert all(line.startswith(("backprop: ", "  ")) for line in lines), printed
    assert not any(word in printed for word in ("celery", "gunicorn", "Warning", "WARNING"))
    assert lines[-5:] == [f"backprop: serving on {api.base}",
                          f"  dashboard: {api.base}/#key={api.key}",
                          "  API key of the tenant 'local' (also in var/api-key):",
                          f"    {api.key}", "  Ctrl-C stops it"], printed
    logs = tmp_path / "var" / "logs"
    assert "Listening at" in (logs / "api.log").read_text()
    assert "beat: Starting" in (logs / "beat.log").read_text()

    flow.full_flow(api, procs)

    # A second tenant, made with the command line while the service runs, sees none of it.
    other = flow.Api(api.base, flow.create_key(procs, "someone-else"))
    assert other.get("/v1/runs")["items"] == []
    other.call("GET", f"/v1/datasets/{api.get('/v1/datasets')['items'][0]['id']}", 404)

    running = flow.up_children(procs)
    assert set(running) == {"api", "worker", "webhooks", "beat"}, running
    assert procs.stop("up", signal.SIGINT, timeout=40) == 0, procs.report("up")
    assert not [pid for pid in running.values() if Path(f"/proc/{pid}").exists()], \
        "backprop up left processes behind"


def test_a_run_out_of_memory_leaves_the_embedded_worker_running(
    procs: Procs, tmp_path: Path,
) -> None:
    """On SQLite and the filesystem broker: a run past WORKER_MEMORY_LIMIT_BYTES fails with
    out_of_memory, the worker is the same process, and the next run trains on it."""
    api, _ = flow.start_up(procs, tmp_path, WORKER_MEMORY_LIMIT_BYTES=flow.SMALL_MEMORY_LIMIT)
    worker = flow.up_children(procs)["worker"]
    flow.run_out_of_memory(api, procs)
    run_id = flow.start_run(api, flow.create_xor(api))["id"]
    assert flow.wait_until(api, procs, run_id)["status"] == "succeeded"
    assert flow.up_children(procs)["worker"] == worker
    assert "stopped" not in (procs.log_dir / "up.log").read_text()  # nothing was restarted


def test_backprop_up_restarts_what_dies_and_leaves_nothing_when_killed(
    procs: Procs, tmp_path: Path,
) -> None:
    """The worker killed (SIGKILL): `up` starts it again and runs train. `up` killed
    (SIGKILL, nothing to clean up after itself): every process it started, however deep
    (gunicorn's workers, Celery's pool process, beat), is gone within seconds, and the run
    it was training was handed back to the queue."""
    procs.env["E2E_MARK"] = uuid.uuid4().hex  # inherited by every process of this test
    mark = f"E2E_MARK={procs.env['E2E_MARK']}"
    api, _ = flow.start_up(procs, tmp_path, CHECKPOINT_SECONDS=1)
    killed = flow.up_children(procs)["worker"]
    pool = children(killed)
    os.kill(killed, signal.SIGKILL)
    procs.wait_for("the worker to be started again", lambda: flow.up_children(procs).get(
        "worker", killed) != killed, 30)
    assert pool and not set(pool) & set(marked(mark))  # its pool process went with it
    assert "the worker stopped (killed by SIGKILL); starting it again" in \
        (procs.log_dir / "up.log").read_text()
    dataset_id = flow.create_xor(api)
    run_id = flow.start_run(api, dataset_id)["id"]
    assert flow.wait_until(api, procs, run_id)["status"] == "succeeded"

    long_id = flow.start_run(api, dataset_id, training={"epochs": 100_000})["id"]
    procs.wait_for("the long run to train", lambda: api.get(
        f"/v1/runs/{long_id}")["epochs_completed"] > 0, flow.RUN_SECONDS)
    ours = marked(mark)
    assert len(ours) >= 6, ours  # up, gunicorn and its 2 workers, celery and its pool, beat
    up = procs.procs["up"]
    up.send_signal(signal.SIGKILL)  # `up` alone, not its children's groups
    up.wait()
    deadline = time.monotonic() + 20  # the worker hands its run back first (CHECKPOINT_SECONDS)
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not marked(mark), {pid: children(pid) for pid in marked(mark)}

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'var' / 'backprop.db'}")
    try:
        with engine.connect() as conn:
            status, attempts = conn.execute(sa.text(
                "SELECT status, attempts FROM runs WHERE id = :id"), {"id": long_id}).one()
    finally:
        engine.dispose()
    assert (status, attempts) == ("queued", 0)  # handed back, to resume on the next start


def test_backprop_migrate(procs: Procs, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'backprop.db'}"  # its folder does not exist yet
    procs.env["BACKPROP_DATABASE_URL"] = url
    procs.run("migrate", [str(BIN / "backprop"), "migrate"])
    engine = sa.create_engine(url)
    try:
        assert "runs" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
