"""Cold and warm first-run latency of the dense engine's compiled kernel (issue #16): a fresh
process starts as a worker does (import nn, import numba, kernel.warm()) and trains XOR (2-4-1,
per-sample SGD, one epoch), with an empty numba cache (cold: compiled from scratch) and with
the cache written by the cold run (warm). Each in its own process, `repeats` times; medians.

    .venv/bin/python bench/kernel_latency.py [--repeats N] [--out bench/RESULTS.md]

It rewrites the "kernel" section of bench/RESULTS.md.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, command, machine, table, write_section

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import time
t0 = time.perf_counter()
import nn
X, y = nn.generate("xor", 200, 0, seed=0)
plan = nn.build({"layers": [{"type": "dense", "units": 4}, {"type": "dense", "units": 1}]},
                {"epochs": 1, "seed": 0, "optimizer": {"type": "sgd", "learning_rate": 0.5}},
                nn.describe(X, y))
t1 = time.perf_counter()
import numba
t2 = time.perf_counter()
from nn.engines import kernel
c2 = time.process_time()
kernel.warm()
t3, c3 = time.perf_counter(), time.process_time()
nn.train(plan, X, y)
print(t1 - t0, t2 - t1, t3 - t2, c3 - c2, time.perf_counter() - t3)
"""
COLUMNS = ("import_and_plan_s", "import_numba_s", "warm_s", "warm_cpu_s", "first_train_s")


def once(cache: str) -> tuple[float, ...]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return tuple(float(v) for v in out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    cold, warm = [], []
    for _ in range(args.repeats):
        cache = tempfile.mkdtemp()
        try:
            cold.append(once(cache))              # warm() compiles
            warm.append(once(cache))              # warm() loads
        finally:
            shutil.rmtree(cache)
    report = {name: {c: statistics.median(r[i] for r in runs) for i, c in enumerate(COLUMNS)}
              for name, runs in (("cold", cold), ("warm", warm))}
    print(json.dumps(report, indent=1))
    rows = [[name, *(f"{r[c]:.3f}" for c in COLUMNS)] for name, r in report.items()]
    write_section("kernel", [
        "## The compiled kernel's first-run latency", "",
        f"Command: `{command()}` (fresh processes; medians of {args.repeats}).", "",
        *machine(), "",
        *table(["numba cache", "import nn and build the plan, s", "import numba, s",
                "kernel.warm() (both dtypes), s", "of it CPU, s",
                "then the first nn.train (1 epoch of XOR), s"],
               rows), "",
        "- cold: an empty cache, so warm() compiles the kernels (two entry points, float64 "
        "and float32); warm: the cache the cold run wrote, so warm() loads them. A worker "
        "pays both when a pool process starts (worker/app.py calls kernel.warm()); a run "
        "then pays only the last column. The Docker image compiles at build time. "
        "bench/README.md says where the time goes."], Path(args.out))


if __name__ == "__main__":
    main()
