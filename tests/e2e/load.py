"""Many runs at once through a deployment: submit them, wait for all, check none was lost and
none trained twice, and measure. Used by tests/e2e/test_faults.py (a small load) and
bench/load.py (the full one, written to the load section of bench/RESULTS.md)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from tests.e2e import flow
from tests.procs import Procs

# A small run: XOR, 200 samples, 30 full-batch epochs (a few hundredths of a second of
# training), so what is measured is the service around the training.
DATA = {"kind": "xor", "n_samples": 200, "noise": 0, "seed": 1}
TRAINING = {"loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 0.5},
            "batch_size": None, "epochs": 30, "seed": 1, "validation_fraction": 0.2}


@dataclass
class Outcome:
    runs: int
    submit_seconds: float  # first POST sent .. last answered
    seconds: float  # first created_at .. last finished_at
    statuses: dict[str, int]
    attempts: dict[int, int]  # attempts -> how many runs
    bad_epochs: list[str]  # runs whose epoch rows are not exactly 1..epochs_total
    waits: list[float]  # started_at - created_at, seconds

    @property
    def throughput(self) -> float:
        return self.runs / self.seconds

    def wait_percentiles(self) -> dict[str, float]:
        return {f"p{q}": float(np.percentile(self.waits, q)) for q in (50, 90, 99)}


def submit(api: flow.Api, n: int, threads: int = 8) -> tuple[list[str], float]:
    """`n` runs on one new data set, POSTed by `threads` clients at once; their ids."""
    dataset_id = api.post("/v1/datasets", {"name": "load", "generator": DATA}, 201)["id"]
    body = {"dataset_id": dataset_id, "network": flow.XOR_NET, "training": TRAINING}
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(lambda _: api.post("/v1/runs", body, 202)["id"], range(n)))
    return ids, time.monotonic() - started


def wait_all(procs: Procs, engine: sa.Engine, ids: list[str], timeout: float) -> None:
    """Until every run has finished (read from the database: cheap for hundreds of runs)."""
    def finished() -> bool:
        with engine.connect() as conn:
            left = conn.execute(sa.text(
                "SELECT count(*) FROM runs WHERE id = ANY(:ids) AND status NOT IN "
                "('succeeded', 'failed', 'cancelled')"), {"ids": ids}).scalar()
        return left == 0

    procs.wait_for(f"{len(ids)} runs to finish", finished, timeout, interval=0.5)


def measure(engine: sa.Engine, ids: list[str], submit_seconds: float) -> Outcome:
    with engine.connect() as conn:
        runs = conn.execute(sa.text(
            "SELECT id, status, attempts, epochs_total, created_at, started_at, finished_at "
            "FROM runs WHERE id = ANY(:ids)"), {"ids": ids}).all()
        epochs = {row.run_id: row for row in conn.execute(sa.text(
            "SELECT r.id AS run_id, count(*) AS n, count(DISTINCT e.epoch) AS distinct_n, "
            "min(e.epoch) AS first, max(e.epoch) AS last FROM epochs e "
            "JOIN runs r ON r.seq = e.run_seq WHERE r.id = ANY(:ids) AND e.phase = 1 "  # train
            "GROUP BY r.id"), {"ids": ids})}
    assert len(runs) == len(ids), "runs are missing from the database"
    statuses: dict[str, int] = {}
    attempts: dict[int, int] = {}
    bad = []
    for run in runs:
        statuses[run.status] = statuses.get(run.status, 0) + 1
        attempts[run.attempts] = attempts.get(run.attempts, 0) + 1
        e = epochs.get(run.id)
        if e is None or (e.n, e.distinct_n, e.first, e.last) != (
                run.epochs_total, run.epochs_total, 1, run.epochs_total):
            bad.append(run.id)
    started = [r for r in runs if r.started_at is not None]
    return Outcome(
        runs=len(runs), submit_seconds=submit_seconds,
        seconds=(max(r.finished_at for r in runs if r.finished_at)
                 - min(r.created_at for r in runs)).total_seconds(),
        statuses=statuses, attempts=attempts, bad_epochs=bad,
        waits=[(r.started_at - r.created_at).total_seconds() for r in started],
    )


def check(outcome: Outcome) -> None:
    """None lost (every run succeeded), none twice (one claim each, every epoch once)."""
    assert outcome.statuses == {"succeeded": outcome.runs}, outcome.statuses
    assert outcome.attempts == {1: outcome.runs}, outcome.attempts
    assert outcome.bad_epochs == [], outcome.bad_epochs


def run_load(api: flow.Api, procs: Procs, engine: sa.Engine, n: int,
             timeout: float) -> Outcome:
    ids, submit_seconds = submit(api, n)
    wait_all(procs, engine, ids, timeout)
    return measure(engine, ids, submit_seconds)


def summary(outcome: Outcome) -> dict[str, Any]:
    return {"runs": outcome.runs, "seconds": round(outcome.seconds, 2),
            "runs_per_s": round(outcome.throughput, 2),
            "queue_wait_s": {k: round(v, 2) for k, v in outcome.wait_percentiles().items()},
            "statuses": outcome.statuses, "attempts": outcome.attempts}
