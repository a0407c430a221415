"""Sweeps: a grid or random search over a run spec, answered by ordinary runs (its children).

Every child is made when the sweep is submitted, built and checked as POST /v1/runs checks a
run (service/api/sweeps.py), and stored `pending`: held back until the sweep may have one
more run going. Why a status of its own rather than a queued run left unpublished: a pending
run is not claimed (the claim takes queued runs), not republished (the reconciler republishes
queued ones) and not counted by TENANT_MAX_ACTIVE_RUNS (queued, running, cancelling), so the
lifecycle from `queued` on is the one every run has; the only new moves are pending ->
queued (`release`, a compare-and-set) and pending -> cancelled (a cancel).

Release: at most `max_concurrent` of a sweep's children queued, running or cancelling, and
the tenant within its active-run limit, the oldest pending children first. It happens
- at submission, in the transaction that makes the children;
- in the worker that finishes a child, right after the run's final transaction
  (worker/training.py);
- in every reconciler pass, for every sweep not settled (worker/reconcile.py): what a
  worker that died between those two transactions left held, what a cancelled child or
  another run of the tenant freed.
Each release locks the tenant's row first (limits.lock_tenant), so releases and run
creations of one tenant count one after the other, and a limit is never overshot.

Settling: a sweep with no child left pending or active is settled once, by whoever sees it
first (a compare-and-set on `finished_at`), with its sweep.succeeded / failed / cancelled
webhook event in the same transaction. Its status is always derived from its children's
rows; the stored `outcome` only keeps it once they may have been deleted.

Early stopping (ASHA, asynchronous successive halving): rungs at min_epochs * rf^k training
epochs (below the run's last epoch). A child that reaches a rung is compared, on the sweep's
metric at that epoch, with every sibling whose epoch row at that rung exists: unless it is
among the best max(1, floor(n / rf)) of those n (itself counted), it stops through the
cooperative cancel, with error code `stopped_early`. The decision is made in the worker's
flush (worker/progress.py), in the fenced transaction that writes the rung's epoch row, so
the row and the decision commit together or not at all: a worker that dies before the
commit leaves neither, and the run resumed from its checkpoint reaches the rung again.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import limits
from service.models import ACTIVE_STATUSES, RUN_STATUSES, Epoch, Run, Sweep, utcnow
from service.serialize import FINISHED_STATUSES, finite, timestamp
from service.webhooks import emit, emit_run

METRICS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
STOPPED_EARLY = "stopped_early"
# A step of a parameter's path: a name, then any number of [index].
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")
_ROOTS = ("network", "training")


# ---- the children's specs --------------------------------------------------------------------

def parse_path(path: str) -> list[str | int]:
    """"network.layers[0].units" -> ["network", "layers", 0, "units"]; ValueError saying why
    when it is not such a path into `network` or `training`."""
    steps: list[str | int] = []
    for part in path.split("."):
        m = _STEP.fullmatch(part)
        if m is None:
            raise ValueError(f"{part!r} is not a name followed by [index]es; a path reads "
                             f"like training.optimizer.learning_rate or "
                             f"network.layers[0].units")
        steps.append(m.group(1))
        steps.extend(int(i) for i in re.findall(r"\d+", m.group(2)))
    if steps[0] not in _ROOTS:
        raise ValueError(f"must start with {' or '.join(_ROOTS)}")
    return steps


def set_path(spec: dict[str, Any], steps: list[str | int], value: Any,
             defaults: dict[str, Any] | None = None) -> None:
    """Put `value` at `steps` in `spec` (changed in place). An object missing on the way is
    taken from `defaults` (the base spec as built, every default filled in), so that
    training.optimizer.learning_rate on a base without an optimizer keeps the default
    optimizer's other fields; else it is made empty. A list index must exist. ValueError
    saying where the path leaves the spec."""
    node: Any = spec
    default: Any = defaults
    for i, step in enumerate(steps[:-1]):
        node, default = _child(node, default, step, steps[i + 1], i)
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ValueError(f"has no item {last} there")
    elif not isinstance(node, dict):
        raise ValueError(f"{last!r} is set inside something that is not an object")
    node[last] = value


def _child(node: Any, default: Any, step: str | int, next_step: str | int, i: int
           ) -> tuple[Any, Any]:
    """The node one step down, and the defaults' node there (None where they have none)."""
    if isinstance(default, dict):
        below = default.get(step) if isinstance(step, str) else None
    elif isinstance(default, list) and isinstance(step, int) and step < len(default):
        below = default[step]
    else:
        below = None
    if isinstance(step, int):
        if not isinstance(node, list) or step >= len(node):
            raise ValueError(f"has no item {step} at step {i + 1}")
        return node[step], below
    if not isinstance(node, dict):
        raise ValueError(f"{step!r} (step {i + 1}) is inside something that is not an object")
    if step not in node or node[step] is None:
        if isinstance(next_step, int):
            raise ValueError(f"{step!r} (step {i + 1}) is not in the base spec")
        node[step] = copy.deepcopy(below) if isinstance(below, dict) else {}
    return node[step], below


@dataclass
class Choice:
    """One parameter's value in one child: the value, and its index in the parameter's
    list (a grid, or a random `choice`), None for a drawn number."""

    value: Any
    index: int | None


def combinations(parameters: Mapping[str, Any], method: str, max_runs: int | None,
                 seed: int | None, most: int) -> list[dict[str, Choice]]:
    """The children's parameter values, in order: a grid's every combination (the last
    parameter varying fastest), or `max_runs` random draws. ValueError (path, message) when
    a grid has more than max_runs (or `most`) combinations."""
    names = list(parameters)
    if method == "grid":
        sizes = [len(parameters[n]) for n in names]
        total = math.prod(sizes)
        cap = min(max_runs or most, most)
        if total > cap:
            raise SweepError("parameters", f"the grid has {total} combinations "
                             f"({' x '.join(map(str, sizes))}); at most {cap} are allowed "
                             f"(max_runs)")
        return [{n: Choice(parameters[n][i], i) for n, i in zip(names, idx)}
                for idx in itertools.product(*(range(s) for s in sizes))]
    rng = random.Random(seed)
    return [{n: _draw(rng, parameters[n]) for n in names} for _ in range(max_runs or 0)]


def _draw(rng: random.Random, dist: Any) -> Choice:
    if isinstance(dist, list):  # a plain list in a random sweep: a choice
        dist = {"choice": dist}
    (kind, arg), = dist.items()
    if kind == "choice":
        i = rng.randrange(len(arg))
        return Choice(arg[i], i)
    a, b = arg
    if kind == "uniform":
        return Choice(rng.uniform(a, b), None)
    if kind == "log_uniform":
        return Choice(math.exp(rng.uniform(math.log(a), math.log(b))), None)
    return Choice(rng.randint(int(a), int(b)), None)  # int_uniform


def check_distribution(name: str, dist: Any) -> None:
    """SweepError unless `dist` is a distribution a random sweep can draw from."""
    where = f"parameters['{name}']"
    if isinstance(dist, list):
        return
    (kind, arg), = dist.items()
    if kind == "choice":
        return
    a, b = arg
    if a > b:
        raise SweepError(f"{where}.{kind}", f"[{a}, {b}]: the low end is above the high end")
    if kind == "log_uniform" and a <= 0:
        raise SweepError(f"{where}.{kind}", f"[{a}, {b}]: a log-uniform range must be above 0")
    if kind == "int_uniform" and (a != int(a) or b != int(b)):
        raise SweepError(f"{where}.{kind}", f"[{a}, {b}]: an integer range needs integers")


class SweepError(Exception):
    """A bad sweep: the path of the field and why (the API answers 422 with them)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def choice_path(name: str, choice: Choice) -> str:
    """Where a child's value came from: parameters['lr'][2], or parameters['lr'] for a draw."""
    where = f"parameters['{name}']"
    return where if choice.index is None else f"{where}[{choice.index}]"


# ---- status, counts, the best child ---------------------------------------------------------

def counts(session: Session, sweep_id: str) -> dict[str, int]:
    """The sweep's children by status (every status, 0 included)."""
    rows = session.execute(sa.select(Run.status, sa.func.count()).where(
        Run.sweep_id == sweep_id).group_by(Run.status)).all()
    found = dict(rows)
    return {s: int(found.get(s, 0)) for s in RUN_STATUSES}


def derived_status(sweep: Sweep, by_status: Mapping[str, int]) -> str:
    """queued (nothing started yet), running, cancelling (cancelled, children still
    stopping), or once no child is pending or active: cancelled (the sweep was), succeeded
    (a child did), failed."""
    active = sum(by_status[s] for s in ("pending", *ACTIVE_STATUSES))
    if active:
        if sweep.cancel_requested:
            return "cancelling"
        started = active - by_status["pending"] - by_status["queued"]
        return "running" if started or sum(by_status[s] for s in FINISHED_STATUSES) \
            else "queued"
    if sweep.outcome is not None:
        return sweep.outcome
    if sweep.cancel_requested:
        return "cancelled"
    return "succeeded" if by_status["succeeded"] else "failed"


def metric_of(run: Run, metric: str) -> float | None:
    value = finite((run.metrics or {}).get(metric))
    return value if isinstance(value, (int, float)) else None


def ranked(session: Session, sweep: Sweep) -> list[Run]:
    """The sweep's children, best first: the succeeded ones by the final metric (the
    sweep's goal); then those that ended or are running with a metric, the furthest trained
    first (ASHA stops the weaker at lower rungs, so epochs reached rank them) and by metric
    among equals; then the rest in the order they were made."""
    runs = session.scalars(sa.select(Run).where(Run.sweep_id == sweep.id)
                           .order_by(Run.seq)).all()
    sign = -1.0 if sweep.goal == "maximize" else 1.0

    def key(pair: tuple[int, Run]) -> tuple[int, int, float, int]:
        i, run = pair
        value = metric_of(run, sweep.metric)
        if value is None:
            return (2, 0, 0.0, i)
        if run.status == "succeeded":
            return (0, 0, sign * value, i)
        return (1, -(run.epochs_completed or 0), sign * value, i)

    return [run for _i, run in sorted(enumerate(runs), key=key)]


def best_run(session: Session, sweep: Sweep) -> Run | None:
    """The succeeded child with the best final metric, or None."""
    first = next(iter(ranked(session, sweep)), None)
    if first is None or first.status != "succeeded" or metric_of(first, sweep.metric) is None:
        return None
    return first


def sweep_json(session: Session, sweep: Sweep) -> dict[str, Any]:
    by_status = counts(session, sweep.id)
    best = best_run(session, sweep)
    stopped = session.scalar(sa.select(sa.func.count()).where(
        Run.sweep_id == sweep.id, Run.error_code == STOPPED_EARLY)) or 0
    base = f"/v1/sweeps/{sweep.id}"
    return {
        "id": sweep.id,
        "name": sweep.name,
        "tags": sweep.tags or {},
        "status": derived_status(sweep, by_status),
        "dataset_id": sweep.dataset_id,
        "network": sweep.spec["network"],
        "training": sweep.spec["training"],
        "parameters": sweep.parameters,
        "method": sweep.method,
        "max_concurrent": sweep.max_concurrent,
        "seed": sweep.seed,
        "metric": sweep.metric,
        "goal": sweep.goal,
        "early_stopping": sweep.early_stopping,
        "runs_total": sweep.runs_total,
        "counts": {**by_status, STOPPED_EARLY: int(stopped)},
        "best_run_id": best.id if best is not None else None,
        "best_metric": metric_of(best, sweep.metric) if best is not None else None,
        "cancel_requested": bool(sweep.cancel_requested),
        "created_at": timestamp(sweep.created_at),
        "finished_at": timestamp(sweep.finished_at),
        "links": {"self": base, "runs": f"/v1/runs?sweep_id={sweep.id}",
                  "leaderboard": f"{base}/leaderboard", "cancel": f"{base}/cancel",
                  "promote": f"{base}/promote"},
    }


def leaderboard_json(run: Run, sweep: Sweep, rank: int) -> dict[str, Any]:
    error = None if run.error_code is None else {"code": run.error_code,
                                                 "message": run.error_message or ""}
    return {"rank": rank, "run_id": run.id, "status": run.status,
            "parameters": run.sweep_parameters or {}, "metric": metric_of(run, sweep.metric),
            "epochs_completed": run.epochs_completed, "error": error}


# ---- release and settle ------------------------------------------------------------------------

def release(session: Session, sweep_id: str, tenant_limit: int) -> list[str]:
    """Move the sweep's oldest pending children to queued, as many as its max_concurrent and
    the tenant's active-run limit allow now: their ids, to publish once committed. Locks the
    tenant's row (see the module docstring); call it in the transaction that commits them."""
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or sweep.cancel_requested or sweep.finished_at is not None:
        return []
    limits.lock_tenant(session, sweep.tenant_id)
    active = _active(session, Run.sweep_id == sweep_id)
    tenant_active = _active(session, Run.tenant_id == sweep.tenant_id)
    free = min(sweep.max_concurrent - active, tenant_limit - tenant_active)
    if free <= 0:
        return []
    ids = session.scalars(sa.select(Run.id).where(Run.sweep_id == sweep_id,
                                                  Run.status == "pending")
                          .order_by(Run.seq).limit(free)).all()
    if not ids:
        return []
    released = session.scalars(
        sa.update(Run).where(Run.id.in_(ids), Run.status == "pending")
        .values(status="queued", published_at=None).returning(Run.id),
        execution_options={"synchronize_session": False}).all()
    return list(released)


def _active(session: Session, where: sa.ColumnElement[bool]) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(Run).where(
        where, Run.status.in_(ACTIVE_STATUSES))) or 0)


def settle(session: Session, sweep_id: str) -> str | None:
    """Settle the sweep if no child is pending or active and nobody has yet: its outcome
    (and its sweep.* event, in the caller's transaction), or None."""
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or sweep.finished_at is not None:
        return None
    by_status = counts(session, sweep_id)
    if sum(by_status[s] for s in ("pending", *ACTIVE_STATUSES)):
        return None
    outcome = derived_status(sweep, by_status)
    won = session.execute(
        sa.update(Sweep).where(Sweep.id == sweep_id, Sweep.finished_at.is_(None))
        .values(finished_at=utcnow(), outcome=outcome),
        execution_options={"synchronize_session": False}).rowcount == 1
    if not won:
        return None
    session.refresh(sweep)
    emit(session, sweep.tenant_id, f"sweep.{outcome}", sweep_json(session, sweep))
    return outcome


def cancel(session: Session, sweep: Sweep) -> None:
    """Cancel every child (pending and queued ones at once, with their run.cancelled
    events; running ones cooperatively) and settle the sweep when nothing is left running.
    The sweep's flag first, so no release runs after it."""
    session.execute(sa.update(Sweep).where(Sweep.id == sweep.id).values(cancel_requested=True),
                    execution_options={"synchronize_session": False})
    now = utcnow()
    ended = session.scalars(
        sa.update(Run).where(Run.sweep_id == sweep.id, Run.status.in_(("pending", "queued")))
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .returning(Run.id), execution_options={"synchronize_session": False}).all()
    session.execute(
        sa.update(Run).where(Run.sweep_id == sweep.id, Run.status == "running")
        .values(status="cancelling", cancel_requested=True),
        execution_options={"synchronize_session": False})
    for run_id in ended:
        emit_run(session, session.get(Run, run_id, populate_existing=True))
    settle(session, sweep.id)


# ---- ASHA --------------------------------------------------------------------------------------

@dataclass
class Asha:
    """One child's early stopping, held by its worker (worker/progress.py)."""

    run_id: str
    sweep_id: str
    metric: str
    goal: str
    factor: int  # the reduction factor: the best 1/factor go on at each rung
    rungs: list[int]  # training epochs at which it is decided, ascending
    decided: int = 0  # the training epoch through which rungs are decided (and committed)

    @classmethod
    def of(cls, sweep: Sweep, run_id: str, epochs_total: int) -> Asha | None:
        es = sweep.early_stopping
        if not es:
            return None
        rungs, r = [], int(es["min_epochs"])
        while r < epochs_total:
            rungs.append(r)
            r *= int(es["reduction_factor"])
        return cls(run_id, sweep.id, sweep.metric, sweep.goal,
                   int(es["reduction_factor"]), rungs) if rungs else None

    def due(self, epoch: int) -> list[int]:
        """The rungs reached since the last committed decision, through `epoch`."""
        return [r for r in self.rungs if self.decided < r <= epoch]

    def decide(self, session: Session, epoch: int) -> str | None:
        """For each rung reached (its epoch row written in this transaction): the reason to
        stop, with the cancel flag and `stopped_early` set on the run; else None."""
        for rung in self.due(epoch):
            mine, others = self._values(session, rung)
            n = len(others) + 1
            keep = max(1, n // self.factor)
            better = sum(1 for v in others if _better(v, mine, self.goal))
            if better >= keep:
                why = (f"stopped early by ASHA at epoch {rung}: its {self.metric} "
                       f"({_show(mine)}) is not among the best {keep} of the {n} children "
                       f"that reached that epoch")
                session.execute(
                    sa.update(Run).where(Run.id == self.run_id)
                    .values(cancel_requested=True, error_code=STOPPED_EARLY,
                            error_message=why),
                    execution_options={"synchronize_session": False})
                return why
        return None

    def _values(self, session: Session, rung: int) -> tuple[float | None, list[float | None]]:
        column = getattr(Epoch, self.metric)
        rows = session.execute(
            sa.select(Run.id, column).join(Run, Run.seq == Epoch.run_seq)
            .where(Run.sweep_id == self.sweep_id, Epoch.phase == "train",
                   Epoch.epoch == rung)).all()
        mine = next((finite(v) for i, v in rows if i == self.run_id), None)
        return mine, [finite(v) for i, v in rows if i != self.run_id]


def _better(a: float | None, b: float | None, goal: str) -> bool:
    """Is a strictly better than b? A missing (diverged) value is worse than any other."""
    if a is None:
        return False
    if b is None:
        return True
    return a > b if goal == "maximize" else a < b


def _show(v: float | None) -> str:
    return "none" if v is None else f"{v:.6g}"
