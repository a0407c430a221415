"""The embedded default end to end: `backprop up` in an empty folder, SQLite and kombu's
filesystem broker under it, no server to install; then Ctrl-C stops everything."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import free_port
from tests.e2e import flow
from tests.procs import BIN, Procs


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "Z" not in (
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])


def test_backprop_up(procs: Procs, tmp_path: Path) -> None:
    procs.cwd = tmp_path  # a newcomer's empty folder
    procs.env["BACKPROP_VAR_DIR"] = str(tmp_path / "var")
    port = free_port()
    up = procs.start("up", [str(BIN / "backprop"), "up", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{base}/readyz", timeout=60)
    assert (tmp_path / "var" / "backprop.db").exists()

    # The local tenant's key: kept private in var/api-key, and printed.
    key_file = tmp_path / "var" / "api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    procs.wait_for("the key to be printed", lambda: key in procs.report("up", lines=10_000), 30)
    flow.Api(base).call("GET", "/v1/datasets", 401)

    api = flow.Api(base, key)
    flow.full_flow(api, procs)

    # A second tenant, made with the command line while the service runs, sees none of it.
    other = flow.Api(base, flow.create_key(procs, "someone-else"))
    assert other.get("/v1/runs")["items"] == []
    other.call("GET", f"/v1/datasets/{api.get('/v1/datasets')['items'][0]['id']}", 404)

    children = _children(up.pid)
    assert len(children) == 2, children  # gunicorn and the celery worker
    assert procs.stop("up", signal.SIGINT, timeout=40) == 0, procs.report("up")
    assert not [pid for pid in children if _alive(pid)], "backprop up left processes behind"
    assert f"serving on {base}" in procs.report("up", lines=10_000)


def test_backprop_migrate(procs: Procs, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'backprop.db'}"  # its folder does not exist yet
    procs.env["BACKPROP_DATABASE_URL"] = url
    procs.run("migrate", [str(BIN / "backprop"), "migrate"])
    engine = sa.create_engine(url)
    try:
        assert "runs" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
