"""Load test: many runs submitted at once to a deployment with two workers; none may be lost
and none trained twice. Writes the load section of bench/RESULTS.md (only that section:
bench/common.py's write_section).

    .venv/bin/python bench/load.py [--runs 200] [--workers 2]

What runs: docker-compose.yml's commands as local processes (tests/e2e/test_deployment.py's
`deploy`: migrate, gunicorn, `--workers` Celery workers of concurrency 1, beat) on a new
PostgreSQL database and a fresh Redis key prefix and queue (BACKPROP_TEST_PG,
BACKPROP_TEST_REDIS; the machine's by default), both removed afterwards. The runs are small
(tests/e2e/load.py: XOR, 200 samples, 30 full-batch epochs), so what is measured is the
service around the training: the API, the broker, the claim, the writes.

Not part of the test suite; tests/e2e/test_faults.py runs a 20-run version of the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from common import RESULTS, command, machine, percentile, write_section  # noqa: E402

from tests.conftest import REDIS_URL, _drop_pg_database, _fresh_pg_database  # noqa: E402
from tests.e2e import compose, flow, load  # noqa: E402
from tests.e2e.test_deployment import deploy  # noqa: E402
from tests.procs import Procs, clean_env  # noqa: E402


class TimedApi(flow.Api):
    """The API client of the load, timing each POST /v1/runs (client-side: queueing in
    gunicorn included)."""

    def __init__(self, api: flow.Api) -> None:
        super().__init__(api.base, api.key)
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> requests.Response:
        started = time.monotonic()
        answer = super().call(method, path, expect, **kwargs)
        if (method, path) == ("POST", "/v1/runs"):
            with self._lock:
                self.latencies.append(time.monotonic() - started)
        return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for all to finish")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="backprop-load-"))
    url, admin, name = _fresh_pg_database()
    prefix = f"backprop-load-{uuid.uuid4().hex[:12]}:"
    procs = Procs(folder / "logs", clean_env())
    engine = sa.create_engine(url)
    before = machine()  # with the load average at the start
    ok = False
    try:
        api = TimedApi(deploy(procs, url, prefix, TENANT_MAX_ACTIVE_RUNS=args.runs + 10))
        for i in range(2, args.workers + 1):
            procs.start(f"worker{i}", compose.command("worker"))
        _wait_ready(procs, args.workers)
        outcome = load.run_load(api, procs, engine, args.runs, args.timeout)
        procs.check()
        load.check(outcome)
        ok = True
        print(json.dumps({**load.summary(outcome), "post_runs_s": {
            k: round(v, 3) for k, v in _latencies(api.latencies).items()}}, indent=2))
        write_section("load", _section(args, outcome, api.latencies, before), args.out)
    finally:
        procs.stop_all()
        if not ok:
            print(procs.report(), file=sys.stderr)
        engine.dispose()
        _drop_pg_database(admin, name)
        _drop_redis_keys(prefix)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _wait_ready(procs: Procs, workers: int) -> None:
    names = ["worker"] + [f"worker{i}" for i in range(2, workers + 1)]
    for name in names:
        procs.wait_for(f"{name} to be ready",
                       lambda n=name: "ready." in procs.report(n, lines=1_000_000), 60, 0.2)


def _drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def _latencies(xs: list[float]) -> dict[str, float]:
    return {"p50": percentile(xs, 50), "p90": percentile(xs, 90), "p99": percentile(xs, 99),
            "max": max(xs)}


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _section(args: argparse.Namespace, outcome: load.Outcome, latencies: list[float],
             before: list[str]) -> list[str]:
    p, post = outcome.wait_percentiles(), _latencies(latencies)
    api = compose.command("api")
    return [
        '## Load test (issue #5, "Hard to break")',
        "",
        f"Command: `{command()}` (from the repository root; it writes this section only). "
        f"{outcome.runs} runs POSTed at once by 8 client threads (tests/e2e/load.py) to a "
        f"deployment run as local processes: gunicorn ({_option(api, '--workers')} "
        f"{_option(api, '--worker-class')} workers), {args.workers} Celery workers of concurrency "
        "1, beat, on PostgreSQL and Redis. Each run is small (XOR, 200 samples, 30 "
        "full-batch epochs), so this measures the service around the training.",
        "",
        *before,
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (a "
        "shared machine, where the API, the workers, PostgreSQL and Redis also share the CPUs)",
        "",
        "| what | value |",
        "|---|---|",
        f"| runs submitted | {outcome.runs} |",
        f"| submitting them (first POST sent .. last answered) | {outcome.submit_seconds:.1f} s |",
        f"| POST /v1/runs, each (client-side) p50 / p90 / p99 / max | {post['p50']:.3f} / "
        f"{post['p90']:.3f} / {post['p99']:.3f} / {post['max']:.3f} s |",
        f"| all done (first created_at .. last finished_at) | {outcome.seconds:.1f} s |",
        f"| throughput | {outcome.throughput:.2f} runs/s |",
        f"| queue wait (started_at - created_at) p50 | {p['p50']:.2f} s |",
        f"| queue wait p90 | {p['p90']:.2f} s |",
        f"| queue wait p99 | {p['p99']:.2f} s |",
        f"| statuses | {', '.join(f'{k}: {v}' for k, v in outcome.statuses.items())} |",
        f"| attempts (claims per run) | "
        f"{', '.join(f'{k}: {v} runs' for k, v in outcome.attempts.items())} |",
        f"| runs whose epoch rows are not exactly 1..epochs | {len(outcome.bad_epochs)} |",
        "",
        "None lost (every run succeeded), none trained twice (one claim each, every epoch row "
        "exactly once): the script fails otherwise, and tests/e2e/test_faults.py checks the "
        "same with 20 runs. The queue wait is mostly the queue itself: the runs arrive (about "
        f"{outcome.runs / outcome.submit_seconds:.0f} a second) faster than {args.workers} "
        "workers finish them, so a run waits for the ones before it. Each gunicorn process "
        "imports its broker client before it serves (service/queue.py `prepare`); when its "
        "first POST /v1/runs did, that request took about a second on a busy machine (4.4 s "
        "was seen once).",
    ]


if __name__ == "__main__":
    sys.exit(main())
