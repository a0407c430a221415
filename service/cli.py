"""The `backprop` command.

    backprop up [--host 127.0.0.1] [--port 8000] [--workers 1]
        The embedded default: migrate the configured database (SQLite under ./var unless
        BACKPROP_DATABASE_URL says otherwise), then run the API (gunicorn) and a Celery
        worker with the reconciler's beat, as child processes, until Ctrl-C or SIGTERM.
        Prints the API key of the tenant "local", made on the first start and kept in
        LOCAL_KEY_FILE (./var/api-key, mode 0600) so that every start can print it.
    backprop migrate        bring the database to the newest revision (= alembic upgrade head)
    backprop worker         a Celery worker for a deployment (= celery -A worker.app worker)
    backprop create-key --tenant NAME [--name LABEL]
        A new API key for the tenant NAME (made if it does not exist), printed once on
        stdout (KEY=$(backprop create-key --tenant me)); only its SHA-256 is stored.

The child commands are built here (`api_command`, `worker_command`); docker-compose.yml runs
the same ones, and tests/e2e checks that it does. Workers (`up`'s and `backprop worker`) get
one BLAS thread unless the environment says otherwise (`worker_env`), as docker-compose.yml's
workers do.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from types import FrameType

import sqlalchemy as sa
from flask import Flask

from service import auth, create_app, db
from service.models import ApiKey

# After Ctrl-C: how long the API and the worker may shut down gracefully before they are
# stopped cold. The worker hands its run back to the queue from a checkpoint it writes within
# CHECKPOINT_SECONDS (worker/shutdown.py); a run stopped cold is resumed from its last
# checkpoint once its lease expires.
GRACE_SECONDS = 30.0
# How long `up` waits for the API to answer /readyz.
START_SECONDS = 60.0
# The tenant `up` makes on the first start; its key is kept in LOCAL_KEY_FILE.
LOCAL_TENANT = "local"
# A worker's BLAS threads, 1 unless set: the engine's matrices are small, and more threads
# only fight over the cores (docs/engine-api.md, "BLAS threads"). numpy reads these when it
# loads, so they must be in the worker's environment before its Python starts.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def api_command(host: str, port: int) -> list[str]:
    # gevent workers: every request is a greenlet, so event streams (open for as long as a
    # run trains) and slow requests (a large upload) do not hold one of a few threads.
    # No control socket: it defaults to one path per user, which two servers would share.
    # The config module: log format, graceful timeout, metrics folder, streams ended at
    # SIGTERM (service/gunicorn_conf.py).
    return [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf",
            "--bind", f"{host}:{port}", "--workers", "2", "--worker-class", "gevent",
            "--worker-connections", "1000", "--no-control-socket", "service.wsgi:app"]


def worker_command(concurrency: int = 1, beat: bool = False) -> list[str]:
    # No gossip or mingle: workers need not know each other (the rows coordinate them),
    # and mingle would add a second to every start.
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel",
               "INFO", "--concurrency", str(concurrency), "--without-gossip", "--without-mingle"]
    return command + (["--beat"] if beat else [])


def worker_env() -> dict[str, str]:
    """This environment, with one BLAS thread for each of BLAS_THREADS not set in it."""
    return {**{name: "1" for name in BLAS_THREADS}, **os.environ}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backprop", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_ = commands.add_parser("up", help="API and a worker on this machine, no servers needed")
    up_.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up_.add_argument("--port", type=int, default=8000, help="port to listen on")
    up_.add_argument("--workers", type=int, default=1,
                     help="runs trained at the same time (worker processes)")
    commands.add_parser("migrate", help="bring the database to the newest revision")
    worker = commands.add_parser("worker", help="run a Celery worker (deployment)")
    worker.add_argument("--concurrency", type=int, default=1)
    key = commands.add_parser("create-key", help="a new API key for a tenant, printed once")
    key.add_argument("--tenant", required=True, help="the tenant's name (made if missing)")
    key.add_argument("--name", help="a label for the key, e.g. who or what uses it")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        migrate()
        return 0
    if args.command == "create-key":
        return create_key(args.tenant, args.name)
    if args.command == "worker":
        command = worker_command(args.concurrency)
        os.execve(command[0], command, worker_env())
    return up(args.host, args.port, args.workers)


def migrate() -> str:
    """Upgrade the configured database to head (creating SQLite's folder); its URL."""
    url = create_app().config["DATABASE_URL"]
    path = sa.engine.make_url(url).database if url.startswith("sqlite") else None
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db.upgrade(url)
    return url


def create_key(tenant: str, name: str | None = None) -> int:
    """Print a new key for `tenant` on stdout (and what it is on stderr)."""
    if not auth.TENANT_NAME.fullmatch(tenant):
        print("backprop: a tenant name has 1 to 100 letters, digits, '.', '_' or '-', and "
              "starts with a letter or digit", file=sys.stderr)
        return 2
    if name is not None and not 1 <= len(name) <= 200:
        print("backprop: --name must have 1 to 200 characters", file=sys.stderr)
        return 2
    app = create_app()
    try:
        row, key = _issue(app, tenant, name)
    except sa.exc.DBAPIError as e:
        print(f"backprop: cannot create the key ({type(e.orig).__name__}: {e.orig}); is the "
              "database migrated (backprop migrate)?", file=sys.stderr)
        return 1
    finally:
        db.engine(app).dispose()
    print(f"backprop: API key {row.prefix}... (id {row.id}) for tenant {tenant!r}; it is shown "
          "only now", file=sys.stderr)
    print(key, flush=True)
    return 0


def _issue(app: Flask, tenant: str, name: str | None) -> tuple[ApiKey, str]:
    for attempt in range(2):  # the tenant may be made concurrently: then it exists
        try:
            with db.session_scope(app) as session:
                owner = auth.tenant_named(session, tenant, create=True)
                return auth.issue_key(session, owner, name)
        except sa.exc.IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def local_key(app: Flask) -> str:
    """The embedded default's key: the one in LOCAL_KEY_FILE while it works, else a new key
    for the tenant "local" (made if missing), written there with mode 0600."""
    path = app.config["LOCAL_KEY_FILE"]
    try:
        with open(path, encoding="ascii") as f:
            kept = f.read().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        kept = ""
    with db.session_scope(app) as session:
        if kept and auth.find_key(session, kept) is not None:
            os.chmod(path, 0o600)
            return kept
        tenant = auth.tenant_named(session, LOCAL_TENANT, create=True)
        _, key = auth.issue_key(session, tenant, "backprop up")
    _write_private(path, key + "\n")
    return key


def _write_private(path: str, text: str) -> None:
    """Write `text` to `path`, readable by this user only, replacing it atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    if os.path.exists(tmp):  # left by a crash, maybe with other permissions
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)


def up(host: str, port: int, workers: int) -> int:
    url = migrate()
    print(f"backprop: database {sa.engine.make_url(url).render_as_string()}", flush=True)
    app = create_app()
    try:
        key = local_key(app)
    finally:
        db.engine(app).dispose()
    # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children in order.
    children = {
        name: subprocess.Popen(command, env=env, start_new_session=True,
                               preexec_fn=_die_with_parent)
        for name, command, env in (("api", api_command(host, port), None),
                                   ("worker", worker_command(workers, beat=True), worker_env()))
    }
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        if len(stopping) > 1:  # a second Ctrl-C: stop now
            _signal_all(children, signal.SIGQUIT)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    ready = _wait_ready(f"{base}/readyz", children, stopping)
    if ready:
        print(f"\nbackprop: serving on {base}  (Ctrl-C stops it)\n"
              f"  dashboard: {base}/#key={key}\n"
              f"  API key of the tenant {LOCAL_TENANT!r} (also in {app.config['LOCAL_KEY_FILE']}):"
              f"\n    {key}\n"
              f"  try:  curl -s {base}/v1/datasets -H 'Authorization: Bearer {key}' "
              "-H 'Content-Type: application/json' -d '{\"name\": \"xor\", "
              "\"generator\": {\"kind\": \"xor\"}}'\n  then train it: README.md, \"Walkthrough\""
              "\n", flush=True)
    while ready and not stopping and all(p.poll() is None for p in children.values()):
        time.sleep(0.2)
    died = [name for name, p in children.items() if p.poll() is not None]
    if died and not stopping:
        print(f"backprop: {', '.join(died)} exited; stopping", file=sys.stderr, flush=True)
    _stop(children)
    return 0 if stopping and not died else 1


def _die_with_parent() -> None:
    """In a child, before exec: be sent SIGTERM when `up` dies, even by SIGKILL, so that a
    killed `up` leaves no server behind holding the port (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _wait_ready(url: str, children: dict[str, subprocess.Popen], stopping: list[int]) -> bool:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and not stopping:
        if any(p.poll() is not None for p in children.values()):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    if not stopping:
        print(f"backprop: {url} did not answer within {START_SECONDS:.0f} s", file=sys.stderr)
    return False


def _signal_all(children: dict[str, subprocess.Popen], signum: int) -> None:
    for p in children.values():
        if p.poll() is None:
            p.send_signal(signum)


def _stop(children: dict[str, subprocess.Popen]) -> None:
    """SIGTERM (gunicorn and celery shut down gracefully), then cold, then kill."""
    _signal_all(children, signal.SIGTERM)
    for signum, wait in ((signal.SIGQUIT, GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(p.poll() is None for p in children.values()):
            time.sleep(0.1)
        _signal_all(children, signum)
    for p in children.values():
        p.wait()


if __name__ == "__main__":
    sys.exit(main())
