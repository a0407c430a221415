"""Load test: many runs submitted at once to a deployment with two workers; none may be lost
and none trained twice. Writes bench/LOAD.md.

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
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from tests.conftest import REDIS_URL, _drop_pg_database, _fresh_pg_database  # noqa: E402
from tests.e2e import load  # noqa: E402
from tests.e2e.compose import command  # noqa: E402
from tests.e2e.test_deployment import deploy  # noqa: E402
from tests.procs import Procs, clean_env  # noqa: E402

OUT = ROOT / "bench" / "LOAD.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for all to finish")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="backprop-load-"))
    url, admin, name = _fresh_pg_database()
    prefix = f"backprop-load-{uuid.uuid4().hex[:12]}:"
    procs = Procs(folder / "logs", clean_env())
    engine = sa.create_engine(url)
    load_before = os.getloadavg()
    ok = False
    try:
        api = deploy(procs, url, prefix, TENANT_MAX_ACTIVE_RUNS=args.runs + 10)
        for i in range(2, args.workers + 1):
            procs.start(f"worker{i}", command("worker"))
        _wait_ready(procs, args.workers)
        outcome = load.run_load(api, procs, engine, args.runs, args.timeout)
        procs.check()
        load.check(outcome)
        ok = True
        print(json.dumps(load.summary(outcome), indent=2))
        _write(args, outcome, load_before)
        print(f"wrote {args.out}")
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


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write(args: argparse.Namespace, outcome: load.Outcome, load_before: tuple) -> None:
    p = outcome.wait_percentiles()
    text = f"""# Load test (issue #5, "Hard to break")

Command: `.venv/bin/python bench/load.py --runs {args.runs} --workers {args.workers}` (from
the repository root). {outcome.runs} runs POSTed at once (8 client threads) to a deployment
run as local processes: gunicorn (2 workers x 4 threads), {args.workers} Celery workers of
concurrency 1, beat, on PostgreSQL and Redis. Each run is small (XOR, 200 samples, 30
full-batch epochs), so this measures the service around the training.

- {datetime.date.today().isoformat()}, commit {_commit()} plus the working tree, Python \
{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs
- load average at start: {", ".join(f"{x:.2f}" for x in load_before)} (a shared machine:
  other jobs were running, and the API, the workers, PostgreSQL and Redis share its CPUs)

| what | value |
|---|---|
| runs submitted | {outcome.runs} |
| submitting them (first POST sent .. last answered) | {outcome.submit_seconds:.1f} s |
| all done (first created_at .. last finished_at) | {outcome.seconds:.1f} s |
| throughput | {outcome.throughput:.2f} runs/s |
| queue wait (started_at - created_at) p50 | {p["p50"]:.2f} s |
| queue wait p90 | {p["p90"]:.2f} s |
| queue wait p99 | {p["p99"]:.2f} s |
| statuses | {", ".join(f"{k}: {v}" for k, v in outcome.statuses.items())} |
| attempts (claims per run) | {", ".join(f"{k}: {v} runs" for k, v in outcome.attempts.items())} |
| runs whose epoch rows are not exactly 1..epochs | {len(outcome.bad_epochs)} |

None lost (every run succeeded), none trained twice (one claim each, every epoch row
exactly once): the script fails otherwise, and tests/e2e/test_faults.py checks the same
with 20 runs. The queue wait is mostly the queue itself: the runs arrive (one POST each,
about {outcome.runs / outcome.submit_seconds:.0f} a second) faster than {args.workers} workers
finish them, so a run waits for the ones before it.
"""
    args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
