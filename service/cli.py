"""The `backprop` command.

    backprop up [--host 127.0.0.1] [--port 8000] [--workers 1]
        The embedded default: migrate the configured database (SQLite under ./var unless
        BACKPROP_DATABASE_URL says otherwise), then run the API (gunicorn) and a Celery
        worker with the reconciler's beat, as child processes, until Ctrl-C or SIGTERM.
    backprop migrate        bring the database to the newest revision (= alembic upgrade head)
    backprop worker         a Celery worker for a deployment (= celery -A worker.app worker)

The child commands are built here (`api_command`, `worker_command`); docker-compose.yml runs
the same ones, and tests/e2e checks that it does.
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

from service import create_app, db

# After Ctrl-C: how long a worker may finish its task (warm shutdown) before it is stopped
# cold. A run stopped cold is resumed from its checkpoint once its lease expires.
GRACE_SECONDS = 10.0
# How long `up` waits for the API to answer /readyz.
START_SECONDS = 60.0


def api_command(host: str, port: int) -> list[str]:
    # gthread workers: a slow request (a large upload) does not block the others.
    # No control socket: it defaults to one path per user, which two servers would share.
    return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", "2",
            "--threads", "4", "--worker-class", "gthread", "--no-control-socket",
            "service.wsgi:app"]


def worker_command(concurrency: int = 1, beat: bool = False) -> list[str]:
    # No gossip or mingle: workers need not know each other (the rows coordinate them),
    # and mingle would add a second to every start.
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel",
               "INFO", "--concurrency", str(concurrency), "--without-gossip", "--without-mingle"]
    return command + (["--beat"] if beat else [])


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
    args = parser.parse_args(argv)
    if args.command == "migrate":
        migrate()
        return 0
    if args.command == "worker":
        command = worker_command(args.concurrency)
        os.execv(command[0], command)
    return up(args.host, args.port, args.workers)


def migrate() -> str:
    """Upgrade the configured database to head (creating SQLite's folder); its URL."""
    url = create_app().config["DATABASE_URL"]
    path = sa.engine.make_url(url).database if url.startswith("sqlite") else None
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db.upgrade(url)
    return url


def up(host: str, port: int, workers: int) -> int:
    url = migrate()
    print(f"backprop: database {sa.engine.make_url(url).render_as_string()}", flush=True)
    # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children in order.
    children = {
        name: subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)
        for name, command in (("api", api_command(host, port)),
                              ("worker", worker_command(workers, beat=True)))
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
        print(f"\nbackprop: serving on {base}  (Ctrl-C stops it)\n  try:  curl -s {base}/v1/"
              "datasets -H 'Content-Type: application/json' -d '{\"name\": \"xor\", "
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
