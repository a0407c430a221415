"""Predictions on gunicorn's gevent worker (the deployment's, service/cli.py) against its
gthread worker (2 processes of 4 threads, the API's worker before event streams), side by side.

    .venv/bin/python bench/workers.py [--rounds N] [--out bench/RESULTS.md]

Both stacks are bench/service.py's (the API, a worker and beat on a fresh PostgreSQL database
and Redis prefix each), up at the same time and idle but for the one measured: wrk rounds of
POST /v1/runs/{id}/predict (1 row, the 2-4-1 XOR net; 4 connections) alternate between them,
and medians are compared. Beside requests/s and latency, the API processes' CPU per request
(user and system, from /proc), which a loaded machine moves less than it moves latency. It
rewrites the "workers" section of bench/RESULTS.md.
"""
import argparse
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from common import RESULTS, ROOT, command, machine, median, spread, table, write_section

# bench/service.py (the stack, the client, wrk), not the service package
_spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SECONDS = 6  # one wrk round
CONNECTIONS = 4


def with_class(argv: list[str], kind: str) -> list[str]:
    """The API's command with gunicorn's worker class `kind`; gthread with 4 threads a
    process."""
    argv = list(argv)
    argv[argv.index("--worker-class") + 1] = kind
    if kind != "gthread":
        return argv
    i = argv.index("--worker-connections")
    del argv[i:i + 2]
    i = argv.index("--workers") + 2
    return argv[:i] + ["--threads", "4"] + argv[i:]


def cpu_seconds(pids: list[str]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes so far."""
    user = system = 0
    for pid in pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--classes", default="gevent,gthread",
                    help="gunicorn worker classes, the first the deployment's")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("workers.py needs wrk (apt-get install -y wrk)")
    head = machine()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-workers-"))
    gevent_command = bench.api_command
    kinds = {kind: (lambda h, p, kind=kind: with_class(gevent_command(h, p), kind))
             for kind in args.classes.split(",")}
    stacks, urls, pids, commands = {}, {}, {}, {}
    got: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in kinds}
    try:
        for kind, make in kinds.items():
            bench.api_command = make  # what Stack.up starts
            (tmp / kind).mkdir()
            stack = stacks[kind] = bench.Stack(tmp / kind)
            stack.up()
            commands[kind] = " ".join(["gunicorn", *make("H", 0)[3:]])
            api = bench.Api(stack.base, stack.headers)
            dataset = api.call("POST", "/v1/datasets", 201,
                               json={"name": "bench-xor", "generator": bench.XOR})["id"]
            run = api.wait(api.run(dataset, 2)["id"])
            urls[kind] = f"{stack.base}/v1/runs/{run['id']}/predict"
            pids[kind] = subprocess.run(["pgrep", "-P", str(stack.procs["api"].pid)],
                                        capture_output=True, text=True).stdout.split()
            bench.load(urls[kind], stack.headers, 8, 2.0)  # warm-up: every process
        for _ in range(args.rounds):
            for kind, stack in stacks.items():
                before = cpu_seconds(pids[kind])
                p50, _p99, rate = bench.wrk(urls[kind], stack.headers, CONNECTIONS, SECONDS, tmp)
                after = cpu_seconds(pids[kind])
                n = rate * SECONDS
                got[kind].append((p50, rate, (after[0] - before[0]) / n,
                                  (after[1] - before[1]) / n))
                print(f"  {kind}: {rate:,.0f} requests/s, p50 {p50 * 1e3:.2f} ms", flush=True)
    finally:
        for stack in stacks.values():
            stack.down()
        shutil.rmtree(tmp, ignore_errors=True)
        bench.api_command = gevent_command

    def med(kind: str, i: int) -> float:
        return median([r[i] for r in got[kind]])

    rows = [[kind, f"{med(kind, 1):,.0f} ({spread([r[1] for r in got[kind]], '{:,.0f}')})",
             f"{med(kind, 0) * 1e3:.2f} ({spread([r[0] * 1e3 for r in got[kind]], '{:.2f}')})",
             f"{med(kind, 2) * 1e6:,.0f}", f"{med(kind, 3) * 1e6:,.0f}"] for kind in kinds]
    head.append(f"- load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    first = next(iter(kinds))
    lines = ["## gunicorn's worker classes", "",
             f"Command: `{command()}` (from the repository root). The API as "
             + " and as ".join(f"`{c}`" for c in commands.values()) + ", each "
             f"with its worker and beat on a database and Redis prefix of its own; "
             f"{args.rounds} rounds of wrk ({CONNECTIONS} connections, {SECONDS} s, "
             "POST /v1/runs/{id}/predict, 1 row), alternating; medians and min..max. CPU: "
             "the API processes' own, per request.", "", *head, "",
             *table(["worker class", "requests/s", "p50 ms", "user CPU us/request",
                     "system CPU us/request"], rows), "",
             *(f"- {kind} against {first}: requests/s x{med(kind, 1) / med(first, 1):.2f}, "
               f"p50 x{med(kind, 0) / med(first, 0):.2f}, CPU per request "
               f"x{(med(kind, 2) + med(kind, 3)) / (med(first, 2) + med(first, 3)):.2f}."
               for kind in kinds if kind != first), ""]
    write_section("workers", lines, pathlib.Path(args.out))


if __name__ == "__main__":
    main()
