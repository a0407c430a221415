"""A 16-child sweep on the worker pool: its wall time with 1 and with 2 workers, what 4 and 8
would give by the measured per-run cost and overhead, and ASHA's saving against the full grid.

    .venv/bin/python bench/sweeps.py [--epochs N] [--rounds N] [--out bench/RESULTS.md]

The stack is bench/service.py's (the API, a worker and beat on a fresh PostgreSQL database
and Redis prefix); a second worker (concurrency 1, as docker-compose.yml's) is started for
the 2-worker rounds. The sweep: XOR (200 points) over 4 learning rates x 4 hidden widths,
max_concurrent 16, so the workers are the only limit. Wall time is the sweep's created_at to
its finished_at (when the last child's worker settled it). Per run: the children's
finished_at - started_at (median); the overhead is what the wall time has beyond
ceil(16 / workers) runs back to back. Projected for N workers: ceil(16 / N) x the per-run
time + the measured overhead, which holds while the machine has a core per worker (this one
has 2, so 4 and 8 are what more machines, or cores, would give). ASHA: the same grid with
early stopping (min_epochs = epochs / 8, reduction factor 2) on 2 workers, against the full
grid: epochs trained, wall time, and the best metric each found, and whether ASHA kept the
full grid's best child to the end. Each round runs the three side by side (1 worker, then
2 workers, then ASHA on 2); the tables give the medians of the rounds (min..max). It
rewrites the "sweeps" section of bench/RESULTS.md.
"""
import argparse
import datetime
import importlib.util
import math
import pathlib
import signal
import sys
import tempfile
import time

from common import RESULTS, ROOT, command, machine, median, spread, table, write_section

_spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

RATES = [0.05, 0.2, 0.5, 2.0]
UNITS = [2, 3, 4, 8]
CHILDREN = len(RATES) * len(UNITS)
# ASHA's settings against the full grid: (name, min_epochs as a fraction of the epochs,
# reduction factor): rungs from epochs / 8 halving at each, and one rung at half the epochs
# (a gentler stop: what it saves when it keeps the grid's best child).
ASHA = (("ASHA", 1 / 8, 2), ("ASHA, one rung at 1/2", 1 / 2, 2))


def when(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def sweep(api, dataset: str, epochs: int, early: dict | None = None) -> dict:
    """Submit the 16-child grid and wait until it is settled: the sweep and its children."""
    made = api.call("POST", "/v1/sweeps", 202, json={
        "dataset_id": dataset, "network": bench.NETWORK,
        "training": {**bench.TRAINING, "epochs": epochs, "validation_fraction": 0.25},
        "parameters": {"training.optimizer.learning_rate": RATES,
                       "network.layers[0].units": UNITS},
        "max_concurrent": CHILDREN, "metric": "val_loss", "early_stopping": early})
    deadline = time.monotonic() + 1200
    while True:
        got = api.call("GET", f"/v1/sweeps/{made['id']}", 200)
        if got["finished_at"]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"sweep {made['id']} not settled: {got['counts']}")
        time.sleep(0.25)
    children = api.call("GET", f"/v1/runs?sweep_id={made['id']}&limit=100", 200)["items"]
    return {"sweep": got, "children": children}


def figures(done: dict, workers: int) -> dict:
    s, children = done["sweep"], done["children"]
    wall = (when(s["finished_at"]) - when(s["created_at"])).total_seconds()
    runs = [(when(c["finished_at"]) - when(c["started_at"])).total_seconds() for c in children
            if c["started_at"]]
    per_run = median(runs)
    return {"workers": workers, "wall": wall, "per_run": per_run,
            "overhead": wall - math.ceil(CHILDREN / workers) * per_run,
            "epochs": sum(c["epochs_completed"] for c in children),
            "best": s["best_metric"], "stopped": s["counts"]["stopped_early"],
            "status": s["status"],
            "best_at": next((c["sweep_parameters"] for c in children
                             if c["id"] == s["best_run_id"]), None)}


def med(rounds: list[dict]) -> dict:
    """The rounds' medians, field by field (the numbers), and each one's min..max as
    `<field>_spread`; the rest from the first round."""
    out = dict(rounds[0])
    for k, v in rounds[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values = [r[k] for r in rounds]
            out[k] = median(values)
            out[f"{k}_spread"] = spread(values, "{:.1f}" if k == "wall" else "{:.3g}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    head = machine()
    stack = bench.Stack(pathlib.Path(tempfile.mkdtemp(prefix="bench-sweeps-")))
    try:
        stack.up()
        api = bench.Api(stack.base, stack.headers)
        dataset = api.call("POST", "/v1/datasets", 201,
                           json={"name": "xor", "generator": bench.XOR})["id"]
        got: dict[str, list[dict]] = {"one": [], "two": [], **{a[0]: [] for a in ASHA}}
        kept = {a[0]: 0 for a in ASHA}  # rounds whose best child had the grid's best parameters
        for _ in range(args.rounds):
            got["one"].append(figures(sweep(api, dataset, args.epochs), 1))
            print(got["one"][-1], flush=True)
            stack.start("worker2", [*bench.worker_command(1), "--hostname", "w2@%h"])
            time.sleep(5)  # its Celery app up and consuming
            two_done = sweep(api, dataset, args.epochs)
            got["two"].append(figures(two_done, 2))
            print(got["two"][-1], flush=True)
            ids = {c["id"] for c in two_done["children"]}
            took = {name: sum(f"run {i}: claimed by" in (stack.logs / f"{name}.log").read_text()
                              for i in ids) for name in ("worker", "worker2")}
            for name, fraction, factor in ASHA:
                got[name].append(figures(sweep(api, dataset, args.epochs, {
                    "type": "asha", "min_epochs": max(1, int(args.epochs * fraction)),
                    "reduction_factor": factor}), 2))
                print(name, got[name][-1], flush=True)
                kept[name] += got[name][-1]["best_at"] == got["two"][-1]["best_at"]
            stack.send("worker2", signal.SIGTERM)  # the next round's 1-worker sweep
            stack.procs.pop("worker2").wait(60)
    finally:
        stack.down()
    one, two = med(got["one"]), med(got["two"])
    asha = {name: med(got[name]) for name, _f, _r in ASHA}
    rows = [[f"{f['workers']}", f"{f['wall']:.1f} ({f['wall_spread']})", f"{f['per_run']:.2f}",
             f"{f['overhead']:.1f}", f"{f['epochs']:.0f}", f"{f['best']:.4g}"] for f in (one, two)]
    # 4 and 8 workers: the 2-worker per-run time (the runs then share the 2 cores as they
    # would not on more machines, so the 1-worker time is the one projected) and overhead
    for n in (4, 8):
        projected = math.ceil(CHILDREN / n) * one['per_run'] + two['overhead']
        rows.append([f"{n} (projected)", f"{projected:.1f}",
                     f"{one['per_run']:.2f}", f"{two['overhead']:.1f}", "", ""])
    lines = [
        "## Sweeps on the worker pool (issue #18)",
        "",
        f"`{command()}`",
        "",
        *head,
        "",
        f"A grid of {CHILDREN} XOR runs (learning rate {RATES} x hidden units {UNITS}, "
        f"{args.epochs} epochs of 150 training points, per-sample SGD), max_concurrent "
        f"{CHILDREN}; {args.rounds} rounds, medians (min..max); "
        "wall = the sweep's created_at to finished_at; per run = the children's "
        "median finished_at - started_at; overhead = wall - ceil(16 / workers) x per run. "
        "4 and 8 workers are projected from the 1-worker per-run time and the 2-worker "
        "overhead: this machine has 2 cores, shared with other work.",
        "",
        *table(["workers", "wall s", "per run s", "overhead s", "epochs trained",
                "best val_loss"], rows),
        "",
        f"With 2 workers (the last round) the first took {took['worker']} children and the second "
        f"{took['worker2']}; the sweep went {one['wall'] / two['wall']:.2f}x as fast as on one.",
        "",
        "ASHA against the full grid, both on 2 workers (min_epochs, reduction factor; the "
        "epoch that reaches a rung flushes at once and the rung is decided in that flush, so a "
        "child stops at the rung it loses at):",
        "",
        *table(["", "wall s", "epochs trained", "children stopped early", "best val_loss",
                "rounds whose best was the grid's best child"], [
            ["full grid", f"{two['wall']:.1f} ({two['wall_spread']})", f"{two['epochs']:.0f}",
             "0", f"{two['best']:.4g}", "–"],
            *([f"{name} ({max(1, int(args.epochs * fraction))}, {factor})",
               f"{a['wall']:.1f} ({a['wall_spread']})", f"{a['epochs']:.0f}",
               f"{a['stopped']:.0f}", f"{a['best']:.4g} ({a['best_spread']})",
               f"{kept[name]} of {args.rounds}"]
              for name, fraction, factor in ASHA for a in [asha[name]])]),
        "",
        *(f"- {name}: {a['epochs'] / two['epochs']:.0%} of the full grid's epochs in "
          f"{a['wall'] / two['wall']:.0%} of its wall time; best val_loss "
          f"{a['best'] / two['best']:.3g}x the full grid's (a child stopped at a rung may be "
          "one that would have ended best)." for name, a in asha.items()),
    ]
    write_section("sweeps", lines, pathlib.Path(args.out))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
