"""The `backprop` command.

    backprop up [--host 127.0.0.1] [--port 8000] [--workers 1]
        The embedded default: migrate the configured database (SQLite under ./var unless
        BACKPROP_DATABASE_URL says otherwise), then run the API (gunicorn), a Celery worker,
        the webhook worker and the reconciler's beat as child processes, until Ctrl-C or
        SIGTERM; a child that dies is started again. Their logs go to
        ./var/logs/{api,worker,webhooks,beat}.log; the
        terminal gets only the URL, the API key of the tenant "local" (made on the first
        start and kept in LOCAL_KEY_FILE, ./var/api-key, mode 0600, so that every start can
        print it) and how to stop, and a line when a child dies.
    backprop migrate        bring the database to the newest revision (= alembic upgrade head)
    backprop worker         a Celery worker for a deployment (= celery -A worker.app worker)
    backprop create-key --tenant NAME [--name LABEL]
        A new API key for the tenant NAME (made if it does not exist), printed once on
        stdout (KEY=$(backprop create-key --tenant me)); only its SHA-256 is stored.

The child commands are built here (`api_command`, `worker_command`,
`webhook_worker_command`, `beat_command`);
docker-compose.yml runs the same ones, and tests/e2e checks that it does. Workers (`up`'s and
`backprop worker`) get one BLAS thread unless the environment says otherwise (`worker_env`),
as docker-compose.yml's workers do.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

import sqlalchemy as sa
from flask import Flask

from service import auth, create_app, db
from service.config import VAR_DIR
from service.models import ApiKey

# After Ctrl-C: how long the API and the worker may shut down gracefully before they are
# stopped cold. The worker hands its run back to the queue from a checkpoint it writes within
# CHECKPOINT_SECONDS (worker/shutdown.py); a run stopped cold is resumed from its last
# checkpoint once its lease expires.
GRACE_SECONDS = 30.0
# How long `up` waits for the API to answer /readyz.
START_SECONDS = 60.0
# A child that dies within STABLE_SECONDS of its start died "at once": it is started again
# after 1, 2, 4, ... seconds (at most MAX_BACKOFF_SECONDS), and the MAX_QUICK_DEATHS-th such
# death in a row makes `up` give up, saying why. One that ran longer is started again in 1 s.
STABLE_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 30.0
MAX_QUICK_DEATHS = 5
# The tenant `up` makes on the first start; its key is kept in LOCAL_KEY_FILE.
LOCAL_TENANT = "local"
# A worker's BLAS threads, 1 unless set: the engine's matrices are small, and more threads
# only fight over the cores (docs/engine-api.md, "BLAS threads"). numpy reads these when it
# loads, so they must be in the worker's environment before its Python starts.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def api_command(host: str, port: int, metrics_port: int | None = None) -> list[str]:
    # gevent workers: every request is a greenlet, so event streams (open for as long as a
    # run trains) and slow requests (a large upload) do not hold one of a few threads.
    # No control socket: it defaults to one path per user, which two servers would share.
    # The config module: log format, graceful timeout, metrics folder, streams ended at
    # SIGTERM (service/gunicorn_conf.py).
    # A second port for GET /metrics alone (the setting METRICS_PORT), when there is one.
    metrics = ["--bind", f"{host}:{metrics_port}"] if metrics_port is not None else []
    return [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf",
            "--bind", f"{host}:{port}", *metrics, "--workers", "2", "--worker-class", "gevent",
            "--worker-connections", "1000", "--no-control-socket", "service.wsgi:app"]


def worker_command(concurrency: int = 1) -> list[str]:
    # No gossip or mingle: workers need not know each other (the rows coordinate them),
    # and mingle would add a second to every start.
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel",
            "INFO", "--concurrency", str(concurrency), "--without-gossip", "--without-mingle"]


def webhook_worker_command() -> list[str]:
    # Deliveries wait on the network, not the CPU: threads of one process send several at
    # once (worker/webhook_worker.py), under a name of their own beside the training worker.
    return [sys.executable, "-m", "celery", "-A", "worker.webhook_worker", "worker",
            "--loglevel", "INFO", "--pool", "threads", "--concurrency", "8", "--hostname",
            "webhooks@%h", "--without-gossip", "--without-mingle"]


def beat_command() -> list[str]:
    # Its own process, not the worker's `--beat` child: that one outlived a killed worker.
    return [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO"]


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
    """`backprop up` (the module's docstring); its exit status."""
    url = migrate()
    app = create_app()
    try:
        key = local_key(app)
    finally:
        db.engine(app).dispose()
    log_dir = os.path.join(VAR_DIR, "logs")
    parsed = sa.engine.make_url(url)
    database = _shown(parsed.database) if parsed.database and url.startswith("sqlite") \
        else parsed.render_as_string()
    print(f"backprop: starting (database {database}, logs in {_shown(log_dir)}/)", flush=True)
    commands = (("api", api_command(host, port, app.config["METRICS_PORT"]), None),
                ("worker", worker_command(workers), worker_env()),
                ("webhooks", webhook_worker_command(), None),
                ("beat", beat_command(), None))
    children = [Child(name, command, env, os.path.join(log_dir, f"{name}.log"))
                for name, command, env in commands]
    for child in children:
        child.rotate_log()
        child.start()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        if len(stopping) > 1:  # a second Ctrl-C: stop now
            for child in children:
                child.send(signal.SIGQUIT)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    failure = _wait_ready(f"{base}/readyz", children, stopping)
    if failure is None and not stopping:
        print(banner(base, key, app.config["LOCAL_KEY_FILE"]), flush=True)
    while failure is None and not stopping:
        failure = _supervise(children)
        time.sleep(0.2)
    if failure:
        print(failure, file=sys.stderr, flush=True)
    _stop(children)
    return 1 if failure else 0


def banner(base: str, key: str, key_file: str) -> str:
    """What `up` prints once the service answers: a first call, then the URL, the key and
    how to stop, last, where a newcomer looks."""
    return (f"\n  try:  curl -s {base}/v1/datasets -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' -d '{\"name\": \"xor\", "
            "\"generator\": {\"kind\": \"xor\"}}'\n  then train it: README.md, "
            "\"Walkthrough\"\n\n"
            f"backprop: serving on {base}\n"
            f"  dashboard: {base}/#key={key}\n"
            f"  API key of the tenant {LOCAL_TENANT!r} (also in {_shown(key_file)}):\n"
            f"    {key}\n"
            "  Ctrl-C stops it")


def _shown(path: str) -> str:
    """`path` relative to the working directory when it is inside it."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith("..") else relative


@dataclass
class Child:
    """A process that `up` keeps running, in a session (process group) of its own, with its
    output appended to `log`."""

    name: str
    command: list[str]
    env: dict[str, str] | None
    log: str
    proc: subprocess.Popen | None = None
    started: float = 0.0
    quick_deaths: int = 0  # deaths in a row within STABLE_SECONDS of a start
    restart_at: float | None = None  # when to start it again, once it died

    def rotate_log(self) -> None:
        """Keep the previous `up`'s log as LOG.1, so that a crash can still be read."""
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        if os.path.exists(self.log):
            os.replace(self.log, self.log + ".1")

    def start(self) -> None:
        with open(self.log, "ab") as out:
            # Its own session: a terminal's Ctrl-C reaches only `up`, which stops the
            # children in order, and each child's group can be killed whole.
            self.proc = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent(os.getpid()))
        self.started, self.restart_at = time.monotonic(), None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        """Signal the child itself (its own shutdown stops what it started)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def kill_group(self) -> None:
        """Whatever is left in its process group (a pool process, a gunicorn worker still
        holding the port)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def how_it_ended(self) -> str:
        assert self.proc is not None and self.proc.returncode is not None
        code = self.proc.returncode
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"

    def last_lines(self, n: int = 20) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()[-n:]
        except OSError:
            return ""
        return "".join(f"    {line}\n" for line in lines)


def _supervise(children: list[Child]) -> str | None:
    """Start again each child that died (see STABLE_SECONDS); why `up` gives up, or None."""
    now = time.monotonic()
    for child in children:
        if child.alive():
            continue
        if child.restart_at is None:  # it has just died
            child.kill_group()
            quick = now - child.started < STABLE_SECONDS
            child.quick_deaths = child.quick_deaths + 1 if quick else 1
            if child.quick_deaths >= MAX_QUICK_DEATHS:
                return (f"backprop: the {child.name} keeps stopping at once "
                        f"({child.how_it_ended()}, {child.quick_deaths} times); giving up. "
                        f"The end of {_shown(child.log)}:\n{child.last_lines()}")
            delay = min(2.0 ** (child.quick_deaths - 1), MAX_BACKOFF_SECONDS)
            print(f"backprop: the {child.name} stopped ({child.how_it_ended()}); starting it "
                  f"again in {delay:.0f} s (its log: {_shown(child.log)})", file=sys.stderr,
                  flush=True)
            child.restart_at = now + delay
        elif now >= child.restart_at:
            child.start()
    return None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For a child, before exec: be sent SIGTERM when `up` dies, even by SIGKILL, so that a
    killed `up` leaves nothing behind (Linux; elsewhere a no-op). The children's own
    children go with them: Celery's pool processes die with their parent, gunicorn's workers
    notice theirs is gone."""
    def preexec() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # `up` died before that: nobody would signal us
                os._exit(1)

    return preexec


def _wait_ready(url: str, children: list[Child], stopping: list[int]) -> str | None:
    """Wait for the API to answer; why `up` cannot start, or None. A child that stops
    before then will not do better the next time (a port in use, a broken setting)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and not stopping:
        for child in children:
            if not child.alive():
                return (f"backprop: the {child.name} stopped while starting "
                        f"({child.how_it_ended()}). The end of {_shown(child.log)}:\n"
                        f"{child.last_lines()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(0.2)
    if stopping:
        return None
    return (f"backprop: {url} did not answer within {START_SECONDS:.0f} s; see "
            f"{_shown(children[0].log)}")


def _stop(children: list[Child]) -> None:
    """SIGTERM (gunicorn and celery shut down gracefully), then cold, then kill; then
    whatever is left in each child's process group."""
    for child in children:
        child.send(signal.SIGTERM)
    for signum, wait in ((signal.SIGQUIT, GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(c.alive() for c in children):
            time.sleep(0.1)
        for child in children:
            child.send(signum)
    for child in children:
        if child.proc is not None:
            child.proc.wait()
        child.kill_group()


if __name__ == "__main__":
    sys.exit(main())
