"""The service's own cost, measured against the real stack: gunicorn (the API), a Celery worker
and beat, Redis and PostgreSQL, started here as docker-compose.yml starts them.

    .venv/bin/python bench/service.py [--quick] [--out bench/RESULTS.md]

Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust) and Redis at 127.0.0.1:6379
(BENCH_PG_ADMIN / BENCH_REDIS override them). Everything is isolated and removed afterwards:
a fresh database (CREATE DATABASE, dropped at the end), a unique Redis key prefix and queue,
free loopback ports; the processes are stopped in a `finally`. It rewrites the "service"
section of bench/RESULTS.md.

Measured:
- a run of about 10 s (xor-online's spec with the epochs set from a calibration run) through
  the API, created -> finished, against nn.train alone in this process on the same spec and
  data, three times, alternating (medians); the epoch and layer-statistics rows are counted
  through the API's pages and the served weights compared with the engine's. The worker's
  time outside the engine's epochs (started -> finished minus the epochs' own duration_s)
  is shown too: what the service adds, even when a busy machine slows the epochs down;
- submit-to-running latency with an idle worker over tiny runs (started_at - created_at, and
  by the wall clock until a GET shows the run started);
- POST /v1/runs/{id}/predict on the small XOR net: latency with one client, then requests/s
  and latency with several concurrent clients (wrk when installed, else Python threads). The
  one-client target is judged on wrk's client when installed: Python's requests spends about
  a millisecond of its own per request, on the same 2 cores.
- The same predictions (the same wrk clients) without and then with STREAMS event streams
  (GET /v1/runs/{id}/events) open on a run that does not train: the worker's process group is
  stopped (SIGSTOP) so the run stays queued, and continued afterwards. This is what holding
  the streams open costs (the connections, their keep-alives, each process's hub polling the
  run), and issue #13's targets are judged on it. The streams are read by one thread here on
  raw sockets; the keep-alives each got show they were live.
- The same while a long run trains, without and with the streams (informative: the training
  worker takes one of the 2 cores, so this measures that competition more than the streams);
  how many events each stream got per second shows they were live.
"""
import argparse
import concurrent.futures
import functools
import datetime
import json
import os
import pathlib
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import NamedTuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the service package
from service import cli  # noqa: E402  (the commands docker-compose.yml runs; no NumPy yet)
from service.cli import api_command, worker_command  # noqa: E402

# One BLAS thread, as the workers get it (cli.worker_env): for the worker started below and
# for nn.train alone in this process, so both do the same work the same way. (Set before
# NumPy loads; through bench/suite.py it is already loaded, so the fair figure comes from
# running this script on its own.)
os.environ.update(cli.worker_env())

import redis  # noqa: E402
import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import nn  # noqa: E402
from service import statstore  # noqa: E402
from service.config import DEFAULTS  # noqa: E402
from common import RESULTS, ROOT, command, machine, median, percentile, spread, table, \
    verdict, warn_overrides, write_section  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
BIN = pathlib.Path(sys.executable).parent
RUN_MAX_STATS_EPOCHS = DEFAULTS["RUN_MAX_STATS_EPOCHS"]  # the stack runs with the defaults
XOR = {"kind": "xor", "n_samples": 200, "noise": 0, "seed": 0}
NETWORK = {"layers": [{"type": "dense", "units": 4, "activation": "sigmoid"},
                      {"type": "dense", "units": 1, "activation": "sigmoid"}]}
TRAINING = {"loss": "squared_error", "batch_size": 1, "seed": 0, "validation_fraction": 0,
            "optimizer": {"type": "sgd", "learning_rate": 0.5}}
PREDICT = {"inputs": [[0.5, -0.5]]}
FINISHED = ("succeeded", "failed", "cancelled")
STREAMS = 200  # event streams held open while predictions are measured
CLIENTS = (4, 8)  # concurrent clients of the requests/s measurements


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Round(NamedTuple):
    """One round of predictions with some event streams open."""

    predict: dict[int, tuple[float, float, float]]  # clients -> (p50 s, p99 s, requests/s)
    events: float      # events per stream per second while the predictions ran
    keepalives: float  # keep-alive comments per stream per minute, over the same time


def when(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class Stack:
    """The API, a worker and beat on a fresh database, a unique Redis prefix and queue."""

    def __init__(self, logs: pathlib.Path) -> None:
        self.logs, self.procs = logs, {}
        self.db = f"bench_{uuid.uuid4().hex[:12]}"
        self.prefix = f"{self.db}:"
        self.admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{self.db}"'))
        url = sa.engine.make_url(PG_ADMIN).set(database=self.db)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")},
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONUNBUFFERED": "1",
                    "BACKPROP_DATABASE_URL": url.render_as_string(hide_password=False),
                    "BACKPROP_BROKER_URL": REDIS, "BACKPROP_BROKER_KEYPREFIX": self.prefix,
                    "BACKPROP_QUEUE": self.db, "BACKPROP_TENANT_MAX_EVENT_STREAMS": "1000"}
        self.base = ""
        self.headers: dict[str, str] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            p = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        self.procs[name] = p
        return p

    def up(self) -> None:
        if self.start("migrate", [str(BIN / "alembic"), "upgrade", "head"]).wait(120) != 0:
            raise RuntimeError("alembic upgrade head failed\n" + self.tail("migrate"))
        if hasattr(cli, "create_key"):            # API keys: a tenant for the benchmark
            key = subprocess.run([sys.executable, "-m", "service.cli", "create-key",
                                  "--tenant", "bench"], cwd=ROOT, env=self.env, timeout=60,
                                 capture_output=True, text=True, check=True).stdout.strip()
            self.headers = {"Authorization": f"Bearer {key}"}
        port = free_port()
        self.start("api", api_command("127.0.0.1", port))
        self.start("worker", worker_command(1))
        self.start("beat", [sys.executable, "-m", "celery", "-A", "worker.app", "beat",
                            "--loglevel", "INFO"])
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check()
            try:
                if requests.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the API did not become ready\n" + self.tail())

    def check(self) -> None:
        dead = [n for n, p in self.procs.items() if n != "migrate" and p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited\n" + self.tail(*dead))

    def tail(self, *names: str, lines: int = 30) -> str:
        return "\n".join(f"--- {n} ---\n" + "\n".join(
            (self.logs / f"{n}.log").read_text(errors="replace").splitlines()[-lines:])
            for n in names or self.procs)

    def send(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to the process group of `name` (each was started in a session of its
        own, so the group is that process and its children, e.g. a worker's pool)."""
        os.killpg(self.procs[name].pid, sig)

    def down(self) -> None:
        for p in self.procs.values():             # only the groups started here
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                os.killpg(p.pid, signal.SIGCONT)  # a stopped group acts on SIGTERM only now
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # whatever the leader left behind
            except ProcessLookupError:
                pass
            p.wait()
        with self.admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)'))
        self.admin.dispose()
        r = redis.Redis.from_url(REDIS)
        for key in r.scan_iter(match=f"{self.prefix}*"):
            r.delete(key)
        r.close()


class Api:
    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base, self.http = base, requests.Session()
        self.http.headers.update(headers)

    def call(self, method: str, path: str, expect: int, **kw):
        r = self.http.request(method, self.base + path, timeout=30, **kw)
        if r.status_code != expect:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def run(self, dataset: str, epochs: int) -> dict:
        return self.call("POST", "/v1/runs", 202, json={
            "dataset_id": dataset, "network": NETWORK,
            "training": {**TRAINING, "epochs": epochs}})

    def wait(self, run_id: str, statuses=FINISHED, interval: float = 0.25,
             timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.call("GET", f"/v1/runs/{run_id}", 200)
            if run["status"] in statuses:
                return run
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} still {run['status']} after {timeout} s")
            time.sleep(interval)

    def items(self, path: str) -> list[dict]:
        """Every row of a paged list (limit 1000, following next_cursor)."""
        rows, cursor = [], None
        while True:
            page = self.call("GET", path, 200,
                             params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
            rows += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return rows

    def count(self, path: str) -> int:
        return len(self.items(path))


class Streams:
    """`n` GET requests of an event stream held open on raw sockets and read by one thread:
    a client as light as can be, so that what is measured is the server's cost."""

    def __init__(self, base: str, path: str, headers: dict[str, str], n: int) -> None:
        host, port = base.removeprefix("http://").split(":")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}"
                   "Accept: text/event-stream\r\n\r\n").encode()
        self.selector = selectors.DefaultSelector()
        self.events = 0       # "event:" lines received, all streams together
        self.keepalives = 0   # ": keep-alive" comments received, all streams together
        self.answered = 0     # streams whose answer was a 200 with an event in it
        self.closed = 0       # streams the server closed
        self.stop = threading.Event()
        for _ in range(n):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, {"tail": b"", "seen": 0})
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.2):
                state, data = key.data, key.fileobj.recv(1 << 16)
                if not data:
                    self.selector.unregister(key.fileobj)
                    self.closed += 1
                    continue
                if not state["seen"] and not state["tail"] and not data.startswith(
                        b"HTTP/1.1 200"):
                    raise RuntimeError(f"an event stream answered {data[:200]!r}")
                # The tail is longer than the markers: one split over two reads counts once.
                joined = state["tail"] + data
                new = joined.count(b"event: ") - state["tail"].count(b"event: ")
                self.keepalives += (joined.count(b": keep-alive")
                                    - state["tail"].count(b": keep-alive"))
                state["tail"] = joined[-16:]
                if new and not state["seen"]:
                    self.answered += 1
                state["seen"] += new
                self.events += new

    def wait_open(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.answered < n:
            if time.monotonic() > deadline or not self.thread.is_alive() or self.closed:
                raise RuntimeError(f"{self.answered} of {n} event streams answered, "
                                   f"{self.closed} closed")
            time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def load(url: str, headers: dict, clients: int, seconds: float, max_requests: int = 100_000
         ) -> tuple[list[float], float]:
    """POST PREDICT from `clients` threads with keep-alive sessions until `seconds` pass ->
    (latencies in s, requests/s). Every answer must be 200."""
    deadline = time.perf_counter() + seconds

    def client(_):
        http, lat = requests.Session(), []
        http.headers.update(headers)
        while time.perf_counter() < deadline and len(lat) < max_requests:
            t0 = time.perf_counter()
            r = http.post(url, json=PREDICT, timeout=10)
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"predict: {r.status_code} {r.text[:300]}")
        return lat

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        lats = [x for lat in pool.map(client, range(clients)) for x in lat]
    return lats, len(lats) / (time.perf_counter() - t0)


def wrk(url: str, headers: dict, clients: int, seconds: float, tmp: pathlib.Path
        ) -> tuple[float, float, float]:
    """(p50 s, p99 s, requests/s) from wrk with 2 threads (1 for 1 client)."""
    script = tmp / "predict.lua"
    script.write_text("\n".join(["wrk.method = 'POST'", f"wrk.body = '{json.dumps(PREDICT)}'",
                                  "wrk.headers['Content-Type'] = 'application/json'",
                                  *(f"wrk.headers['{k}'] = '{v}'" for k, v in headers.items())]))
    out = subprocess.run(["wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{seconds:.0f}s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk saw errors:\n" + out)
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}

    def latency(q):
        v, u = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(v) * unit[u]

    return latency(50), latency(99), float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """The median, and min..max when there are several."""
    return fmt.format(median(values)) + (f" ({spread(values, fmt)})" if len(values) > 1 else "")


def stream_table(rows: dict[int, list[Round]]) -> list[str]:
    """Medians and min..max of each number of streams' rounds, and the ratios of the medians
    with STREAMS streams against none."""
    clients = sorted(rows[0][0].predict)
    header, lines = ["event streams open"], []
    for c in clients:
        who = "1 client" if c == 1 else f"{c} clients"
        header += [f"{who}: p50 ms", f"{who}: {'p99 ms' if c == 1 else 'requests/s'}"]
    header += ["events per stream per second", "keep-alives per stream per minute"]
    for n, rounds in rows.items():
        line: list = [n]
        for c in clients:
            line += [_spread([r.predict[c][0] * 1e3 for r in rounds]),
                     _spread([r.predict[c][1] * 1e3 for r in rounds]) if c == 1 else
                     _spread([r.predict[c][2] for r in rounds], "{:,.0f}")]
        line += [_spread([r.events for r in rounds], "{:,.1f}") if n else None,
                 _spread([r.keepalives for r in rounds], "{:,.1f}") if n else None]
        lines.append(line)

    def ratio(c: int, i: int) -> str:  # i: 0 the p50, 2 the requests/s
        with_, without = ([r.predict[c][i] for r in rows[n]] for n in (STREAMS, 0))
        return f"x{median(with_) / median(without):.2f}"

    return [*table(header, lines), "", f"- With {STREAMS} streams against none (medians, side "
            f"by side): 1-client p50 {ratio(1, 0)}"
            + "".join(f", {c}-client requests/s {ratio(c, 2)}" for c in clients if c != 1)
            + "."]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 3 s run, fewer samples")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--overhead-only", action="store_true",
                    help="only the run through the API against nn.train (printed; no file)")
    args = ap.parse_args(argv)
    q = args.quick
    run_seconds, rounds, tiny_runs, load_seconds = (3, 1, 10, 3) if q else (10, 3, 30, 10)
    stream_rounds = 1 if q else 3
    head = machine()
    warn_overrides()
    X, y = nn.generate(XOR["kind"], XOR["n_samples"], XOR["noise"], XOR["seed"])
    info = nn.describe(X, y)

    def engine(epochs, every=False):
        """nn.train alone, statistics of the epochs the worker has computed (the service's
        thinning for a run of `epochs`), or of every epoch."""
        thinned = statstore.thinned_after(epochs, RUN_MAX_STATS_EPOCHS)
        picked = None if every or thinned is None else functools.partial(
            statstore.kept, thinned_after=thinned)
        t0 = time.perf_counter()
        r = nn.train(nn.build(NETWORK, {**TRAINING, "epochs": epochs}, info), X, y,
                     stats_epochs=picked)
        return time.perf_counter() - t0, r

    engine(2)                       # the compiled kernel loaded, as the worker has it (warm())
    calib, seconds = 25, 0.0
    while seconds < 0.5:                          # the epochs of a run_seconds run
        calib *= 2
        seconds = engine(calib)[0]
    epochs = round(run_seconds / seconds * calib)
    print(f"service: a {epochs}-epoch run (about {run_seconds} s)", flush=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-service-"))
    stack = Stack(tmp)
    try:
        stack.up()
        api = Api(stack.base, stack.headers)
        dataset = api.call("POST", "/v1/datasets", 201,
                           json={"name": "bench-xor", "generator": XOR})["id"]
        api.wait(api.run(dataset, 2)["id"])                  # warm-up: imports, caches

        # (a) a ~10 s run through the API against the engine alone, interleaved
        alone, server, worker_s, wall, rows_ok, same = [], [], [], [], True, True
        alone_every = []                    # nn.train with statistics of every epoch
        outside = []                        # the worker's time outside the engine's epochs
        for _ in range(rounds):
            seconds, result = engine(epochs)
            alone.append(seconds)
            alone_every.append(engine(epochs, every=True)[0])
            t0 = time.perf_counter()
            run = api.wait(api.run(dataset, epochs)["id"])
            wall.append(time.perf_counter() - t0)
            stack.check()
            if run["status"] != "succeeded":
                raise RuntimeError(f"run failed: {run}")
            server.append((when(run["finished_at"]) - when(run["created_at"])).total_seconds())
            worker_s.append((when(run["finished_at"]) - when(run["started_at"])).total_seconds())
            rows = api.items(f"/v1/runs/{run['id']}/epochs")
            n_epochs = len(rows)
            outside.append(worker_s[-1] - sum(r["duration_s"] for r in rows))
            n_stats = api.count(f"/v1/runs/{run['id']}/layer-stats")  # thinned past 2000
            kept = statstore.kept_count(epochs, run["stats_thinned_after"])
            rows_ok &= (n_epochs, n_stats) == (epochs, len(NETWORK["layers"]) * kept)
            served = api.call("GET", f"/v1/runs/{run['id']}/weights", 200)["layers"]
            same &= served == nn.weights_to_json(result.weights)["layers"]
        run_id = run["id"]
        print(f"  engine alone {median(alone):.2f} s, API created->finished "
              f"{median(server):.2f} s ({median(server) / median(alone) - 1:+.1%}), the "
              f"worker outside the epochs {median(outside):.2f} s; the engine alone with "
              f"statistics of every epoch {median(alone_every):.2f} s", flush=True)
        if args.overhead_only:
            return

        # (b) submit-to-running with an idle worker (20-epoch runs: a GET can see "running")
        started, seen, posted = [], [], []
        for _ in range(tiny_runs):
            time.sleep(0.3)                                   # the worker is idle again
            t0 = time.perf_counter()
            run = api.run(dataset, 20)
            posted.append(time.perf_counter() - t0)
            api.wait(run["id"], ("running", *FINISHED), interval=0.002, timeout=30)
            seen.append(time.perf_counter() - t0)
            run = api.wait(run["id"], interval=0.05)
            started.append((when(run["started_at"]) - when(run["created_at"])).total_seconds())
        print(f"  submit-to-running p50 {median(started) * 1e3:.1f} ms", flush=True)

        # (c) predictions on the small net
        url = f"{stack.base}/v1/runs/{run_id}/predict"
        load(url, stack.headers, 8, 2.0)       # warm-up: every gunicorn worker and thread
                                               # (its first request loads the spec, the model)
        single, single_rate = load(url, stack.headers, 1, load_seconds / 2)
        p50_predict, single_how = percentile(single, 50), "Python requests"
        single_rows = [[f"1 client (Python requests, keep-alive, {len(single)} requests)",
                        f"{p50_predict * 1e3:.2f}", f"{percentile(single, 99) * 1e3:.2f}",
                        f"{single_rate:,.0f}"]]
        if shutil.which("wrk"):
            p50_predict, p99, rate = wrk(url, stack.headers, 1, load_seconds / 2, tmp)
            single_how = "wrk"
            single_rows.append(["1 client (wrk)", f"{p50_predict * 1e3:.2f}", f"{p99 * 1e3:.2f}",
                                f"{rate:,.0f}"])
        concurrent_rows = []
        for clients in CLIENTS:
            if shutil.which("wrk"):
                p50, p99, rate = wrk(url, stack.headers, clients, load_seconds, tmp)
                how = "wrk, 2 threads"
            else:
                lats, rate = load(url, stack.headers, clients, load_seconds)
                p50, p99, how = percentile(lats, 50), percentile(lats, 99), "Python threads"
            concurrent_rows.append([f"{clients} clients ({how})", f"{p50 * 1e3:.2f}",
                                    f"{p99 * 1e3:.2f}", f"{rate:,.0f}"])
            print(f"  predict, {clients} clients: {rate:,.0f} requests/s", flush=True)

        def predict(clients: int, seconds: float) -> tuple[float, float, float]:
            if shutil.which("wrk"):
                return wrk(url, stack.headers, clients, seconds, tmp)
            lats, rate = load(url, stack.headers, clients, seconds)
            return percentile(lats, 50), percentile(lats, 99), rate

        def measure_streams(run_id: str, clients: tuple[int, ...]) -> dict[int, list[Round]]:
            """Predictions from each number of clients (1: load_seconds / 2, more: load_seconds)
            without and with STREAMS streams open on the run, alternating rounds (the
            machine's load moves between them)."""
            rows: dict[int, list[Round]] = {0: [], STREAMS: []}
            for n in (0, STREAMS) * stream_rounds:
                streams = Streams(stack.base, f"/v1/runs/{run_id}/events?max_points=100",
                                  stack.headers, n)  # as the dashboard opens them
                try:
                    streams.wait_open(n)
                    time.sleep(5)  # their replays done (max_points): only live rows from here
                    events, keepalives, t0 = streams.events, streams.keepalives, time.monotonic()
                    measured = {c: predict(c, load_seconds / (2 if c == 1 else 1))
                                for c in clients}
                    elapsed = time.monotonic() - t0
                    stack.check()
                    if streams.closed:
                        raise RuntimeError(f"{streams.closed} event streams were closed")
                    rows[n].append(Round(measured,
                                         (streams.events - events) / elapsed / max(n, 1),
                                         (streams.keepalives - keepalives) / elapsed * 60
                                         / max(n, 1)))
                finally:
                    streams.close()
                print(f"  predict with {n} event streams open: p50 "
                      f"{measured[1][0] * 1e3:.2f} ms, {measured[clients[-1]][2]:,.0f} "
                      f"requests/s; per stream {rows[n][-1].events:,.1f} events/s, "
                      f"{rows[n][-1].keepalives:.1f} keep-alives/min", flush=True)
            return rows

        # (d) predictions with STREAMS event streams open on a run that does not train: the
        # worker is stopped, so the run stays queued and the CPU is the streams' and the
        # predictions' alone (the same clients as (c))
        stack.send("worker", signal.SIGSTOP)
        try:
            queued = api.run(dataset, 100_000)
            idle_rows = measure_streams(queued["id"], (1, *CLIENTS))
            status = api.call("GET", f"/v1/runs/{queued['id']}", 200)["status"]
            if status != "queued":
                raise RuntimeError(f"the run meant to stay queued is {status}")
            api.call("POST", f"/v1/runs/{queued['id']}/cancel", 200)
        finally:
            stack.send("worker", signal.SIGCONT)

        # (e) the same while a long run trains (informative: the run's worker takes a core)
        long = api.run(dataset, 100_000)
        api.wait(long["id"], ("running",), interval=0.05, timeout=60)
        stream_rows = measure_streams(long["id"], (1, 8))
        api.call("POST", f"/v1/runs/{long['id']}/cancel", 200)
        stack.check()
    except BaseException:
        print(stack.tail(), file=sys.stderr)
        raise
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)

    overhead = median(server) / median(alone) - 1
    best_rate = max(float(r[3].replace(",", "")) for r in concurrent_rows)
    # Judged on the medians over rounds, requests/s on the better client count as in (c)
    idle_p50 = {n: median([r.predict[1][0] for r in rows]) for n, rows in idle_rows.items()}
    idle_rate = {n: max(median([r.predict[c][2] for r in rows]) for c in CLIENTS)
                 for n, rows in idle_rows.items()}
    idle_rate8 = {n: median([r.predict[8][2] for r in rows]) for n, rows in idle_rows.items()}
    busy_p50 = {n: median([r.predict[1][0] for r in rows]) for n, rows in stream_rows.items()}
    busy_rate = {n: median([r.predict[8][2] for r in rows]) for n, rows in stream_rows.items()}
    p50_start = median(started)
    head.append(f"- load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    lines = ["## Service", "",
             f"Command: `{command()}` (from the repository root). The stack: "
             f"`alembic upgrade head`, `{' '.join(['gunicorn', *api_command('H', 0)[3:]])}`, "
             f"`{' '.join(['celery', *worker_command(1)[3:]])}` and celery beat, as "
             "docker-compose.yml runs them, on a fresh PostgreSQL database, Redis with its own "
             "key prefix and queue, all on this machine (the load generator too).", "", *head,
             "", "### Targets", "",
             *table(["measure", "target", "measured", "result"], [
                 [f"a {epochs}-epoch xor-online run through the API (created -> finished) vs "
                  f"nn.train alone", "<= +10%", f"{overhead:+.1%} ({median(server):.2f} s vs "
                  f"{median(alone):.2f} s)", verdict(overhead <= 0.10)],
                 ["all epoch and layer-statistics rows stored", "all",
                  f"{'yes' if rows_ok else 'NO'}: {epochs} epochs, {2 * epochs} layer rows "
                  f"per run", verdict(rows_ok)],
                 ["submit-to-running, p50", "< 100 ms", f"{p50_start * 1e3:.1f} ms",
                  verdict(p50_start < 0.1)],
                 [f"POST /predict, one client ({single_how}), p50", "< 5 ms",
                  f"{p50_predict * 1e3:.2f} ms", verdict(p50_predict < 0.005)],
                 ["POST /predict, concurrent clients", ">= 500 requests/s",
                  f"{best_rate:,.0f} requests/s", verdict(best_rate >= 500)],
                 [f"POST /predict with {STREAMS} event streams open (on a queued run), one "
                  f"client ({single_how}), p50 (median of {stream_rounds} rounds)", "< 5 ms",
                  f"{idle_p50[STREAMS] * 1e3:.2f} ms", verdict(idle_p50[STREAMS] < 0.005)],
                 [f"POST /predict with {STREAMS} event streams open (on a queued run), "
                  f"the better of {' and '.join(map(str, CLIENTS))} clients (median of "
                  f"{stream_rounds} rounds)", ">= 500 requests/s",
                  f"{idle_rate[STREAMS]:,.0f} requests/s",
                  verdict(idle_rate[STREAMS] >= 500)]]),
             "", f"- The streams' targets are judged with the streams open on a run that does "
             f"not train (it stays queued: the worker is stopped): what holding them open "
             f"costs. A training run's worker takes one of the {os.cpu_count()} cores, and on "
             f"a busy machine that competition for the CPU, not the streams, decides the "
             f"figures (in this run, with no stream open, 1 client's p50 and 8 clients' "
             f"requests/s: {busy_p50[0] * 1e3:.2f} ms and {busy_rate[0]:,.0f} with the run "
             f"training, {idle_p50[0] * 1e3:.2f} ms and {idle_rate8[0]:,.0f} with it queued); "
             f"that round is shown below, as information.",
             "", "### Details", "",
             *table(["measure", "median", "min..max", "runs"], [
                 ["nn.train alone (statistics of the epochs the service keeps), s",
                  f"{median(alone):.2f}", f"{min(alone):.2f}..{max(alone):.2f}", len(alone)],
                 ["nn.train alone, statistics of every epoch, s", f"{median(alone_every):.2f}",
                  f"{min(alone_every):.2f}..{max(alone_every):.2f}", len(alone_every)],
                 ["API: created -> finished, s", f"{median(server):.2f}",
                  f"{min(server):.2f}..{max(server):.2f}", len(server)],
                 ["API: started -> finished (the worker), s", f"{median(worker_s):.2f}",
                  f"{min(worker_s):.2f}..{max(worker_s):.2f}", len(worker_s)],
                 ["API: POST -> GET shows finished (wall clock, 0.25 s polls), s",
                  f"{median(wall):.2f}", f"{min(wall):.2f}..{max(wall):.2f}", len(wall)],
                 ["the worker outside the engine's epochs (started -> finished minus the "
                  "epochs' duration_s: claim, data, rows, checkpoints, final writes), s",
                  f"{median(outside):.2f}", f"{min(outside):.2f}..{max(outside):.2f}",
                  len(outside)]]),
             "", f"- The served weights {'equal' if same else 'DIFFER FROM'} nn.train's bit for "
             "bit: the same work.",
             "", *table(["submit-to-running (idle worker)", "p50 ms", "p99 ms", "max ms", "runs"],
                        [[name, f"{percentile(v, 50) * 1e3:.1f}", f"{percentile(v, 99) * 1e3:.1f}",
                          f"{max(v) * 1e3:.1f}", len(v)] for name, v in (
                            ("started_at - created_at (server clock)", started),
                            ("POST sent -> a GET shows it started (wall clock, 2 ms polls)",
                             seen), ("POST /v1/runs answered (202)", posted))]),
             "", *table(["POST /v1/runs/{id}/predict, 1 row, 2-4-1 net", "p50 ms", "p99 ms",
                         "requests/s"],
                        [*single_rows, *concurrent_rows]),
             "", f"With event streams open on a queued 100,000-epoch run (the worker stopped "
             f"with SIGSTOP, continued after; each `GET .../events?max_points=100` held open "
             f"by a client reading raw sockets; "
             f"{'wrk' if shutil.which('wrk') else 'Python threads'} for the predictions, the "
             f"clients of the table above), {stream_rounds} round(s) of each, alternating; "
             f"medians and min..max. Each stream got its status event, then a keep-alive "
             f"comment every 15 s while each API process's hub polled the run:", "",
             *stream_table(idle_rows),
             "", "While a 100,000-epoch run of the same net trains (the worker busy on one of "
             "the cores), the same with the streams on that run and 1 and 8 clients "
             "(informative):", "",
             *stream_table(stream_rows), ""]
    write_section("service", lines, pathlib.Path(args.out))


if __name__ == "__main__":
    main()
