"""Train one run: claim it, load its data and weights, run the engine, record the outcome.

Every write after the claim is fenced by the lease (worker/lease.py), so a worker that lost
the run writes nothing more. A run whose worker died is claimed again and resumes from its
last checkpoint; the rows its predecessor flushed after that checkpoint are deleted at the
claim and written again by the resumed run, so every epoch appears exactly once.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app
from sqlalchemy.orm import undefer

import nn
from service import dataio
from service.db import session_scope
from service.models import Artifact, Dataset, Run, utcnow
from worker import lease
from worker.progress import CALIBRATED, Lease, Progress, deadline, finite, put_artifact

log = logging.getLogger(__name__)

# Stop reasons of a run that ended well (perceptron: "converged" / "not_converged").
SUCCEEDED = (None, "early_stopping", "converged", "not_converged")


class InvalidData(Exception):
    """The run's data set, spec or initial weights no longer load: fail with invalid_data."""


@dataclass
class Claimed:
    """What the claim transaction read: the run to train and where to resume."""

    run_id: str
    dataset_id: str
    network: dict
    training: dict
    resume_epoch: int  # the stored checkpoint's epoch, 0 without one


def train_run(run_id: str) -> str:
    """Claim and train `run_id`, in the app context. Returns the run's final status, or why
    it was not trained: "dropped" (not claimable), "settled" (ended by lease.settle_abandoned),
    "lease_lost" (taken over by another worker meanwhile)."""
    cfg = current_app.config
    now = utcnow()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with session_scope() as session:
        token = lease.claim(session, run_id, now=now, lease_seconds=cfg["LEASE_SECONDS"],
                            max_attempts=cfg["MAX_ATTEMPTS"], worker=worker)
        if token is None:
            settled = lease.settle_abandoned(session, now=now, run_id=run_id,
                                             max_attempts=cfg["MAX_ATTEMPTS"])
            outcome = "settled" if settled else "dropped"
            log.info("run %s: not claimable (%s): duplicate or stale message", run_id, outcome)
            return outcome
        run = session.get(Run, run_id)
        assert run is not None and run.started_at is not None  # the claim matched it
        resume_epoch = session.scalar(sa.select(Artifact.epoch).where(
            Artifact.run_id == run_id, Artifact.kind == "checkpoint")) or 0
        lease.forget_after(session, run_id, resume_epoch)
        claimed = Claimed(run_id, run.dataset_id, run.network, run.training, resume_epoch)
        held = Lease(run_id, token, cfg["LEASE_SECONDS"], cfg["FLUSH_SECONDS"],
                     cfg["CHECKPOINT_SECONDS"],
                     deadline(run.started_at, cfg["RUN_TIME_LIMIT_SECONDS"]),
                     cancel=run.cancel_requested)
        log.info("run %s: claimed by %s (attempt %d, from epoch %d)",
                 run_id, worker, run.attempts, resume_epoch)
    progress = Progress(held, epoch=resume_epoch)
    try:
        result = _train(claimed, progress)
        return _finish(progress, result, **_outcome(result))
    except lease.LeaseLost:
        log.warning("run %s: lease lost to another worker; stopped, wrote nothing more", run_id)
        return "lease_lost"
    except InvalidData as exc:
        return _finish(progress, None, status="failed", error_code="invalid_data",
                       error_message=str(exc))
    except Exception as exc:
        timeout = isinstance(exc, SoftTimeLimitExceeded)
        _finish(progress, None, status="failed",
                error_code="timeout" if timeout else "internal_error",
                error_message=f"{type(exc).__name__}: {exc}")
        raise  # and Celery logs the traceback


def _train(claimed: Claimed, progress: Progress) -> nn.TrainResult:
    inputs, targets, task, initial, resume = _load(claimed)
    try:
        plan = nn.build(claimed.network, claimed.training,
                        nn.describe(inputs, targets, task=task))
        weights = nn.Model.from_npz(initial).weights if initial and resume is None else None
    except (nn.SpecError, ValueError) as exc:
        raise InvalidData(str(exc)) from exc

    def run(resume: bytes | None, every: int) -> nn.TrainResult:
        try:
            return nn.train(plan, inputs, targets, initial_weights=weights, resume=resume,
                            on_epoch=progress.on_epoch, should_stop=progress.should_stop,
                            checkpoint_every=every, on_checkpoint=progress.on_checkpoint)
        except nn.SpecError as exc:
            raise InvalidData(str(exc)) from exc

    result = run(resume, 1)  # calibrating: see worker/progress.py
    if result.stop_reason == CALIBRATED:
        assert progress.every is not None and progress.state is not None
        result = run(progress.state, progress.every)
    return result


def _load(claimed: Claimed) -> tuple[np.ndarray, np.ndarray, str, bytes | None, bytes | None]:
    """The data set's arrays and task, the initial weights and the checkpoint (if any)."""
    with session_scope() as session:
        dataset = session.get(Dataset, claimed.dataset_id)
        artifacts = {a.kind: a for a in session.scalars(sa.select(Artifact).where(
            Artifact.run_id == claimed.run_id,
            Artifact.kind.in_(("initial", "checkpoint"))).options(
                undefer(Artifact.data)))}
        if dataset is None:
            raise InvalidData(f"data set {claimed.dataset_id} not found")
        data, task = dataset.data, dataset.task
    try:
        inputs, targets = dataio.decode(data)
    except Exception as exc:  # zipfile, KeyError, ValueError: all mean unreadable
        raise InvalidData(f"the stored data set does not load: {exc!r}") from exc
    checkpoint = artifacts.get("checkpoint")
    if checkpoint is not None and checkpoint.epoch != claimed.resume_epoch:
        raise RuntimeError("the checkpoint changed while the run was claimed")
    initial = artifacts.get("initial")
    return (inputs, targets, task, initial.data if initial else None,
            checkpoint.data if checkpoint else None)


def _outcome(result: nn.TrainResult) -> dict[str, object]:
    """The run's final status and error from the engine's stop reason."""
    reason = result.stop_reason
    if reason == "cancelled":
        return {"status": "cancelled"}
    if reason in SUCCEEDED:
        return {"status": "succeeded"}
    if reason == "timeout":
        return {"status": "failed", "error_code": "timeout",
                "error_message": f"the run did not finish within its time limit "
                f"({current_app.config['RUN_TIME_LIMIT_SECONDS']} s)"}
    error = result.error or {"code": "internal_error", "message": f"stopped: {reason}"}
    return {"status": "failed", "error_code": error["code"], "error_message": error["message"]}


def _finish(progress: Progress, result: nn.TrainResult | None, *, status: str,
            error_code: str | None = None, error_message: str | None = None) -> str:
    """The last fenced transaction: remaining rows, weights, outcome; the lease released.

    A cancel requested meanwhile wins (cancelling -> cancelled); the weights are kept either
    way. The checkpoint is dropped once the run succeeded, kept when it may be continued.
    """
    run_id = progress.lease.run_id
    with session_scope() as session:
        progress.write(session)
        if progress.lease.cancel:
            status, error_code, error_message = "cancelled", None, None
        values: dict[str, object] = {"status": status, "error_code": error_code,
                                     "error_message": error_message}
        if result is not None:
            put_artifact(session, run_id, "final", result.epochs_completed,
                         result.model.to_npz())
            if result.best_model is not None:
                put_artifact(session, run_id, "best", result.best_epoch or 0,
                             result.best_model.to_npz())
            values.update(metrics=finite(result.metrics),
                          epochs_completed=result.epochs_completed)
        if status == "succeeded":
            session.execute(sa.delete(Artifact).where(
                Artifact.run_id == run_id, Artifact.kind == "checkpoint"),
                execution_options=lease.NO_SYNC)
        lease.release(session, run_id, progress.lease.token, now=utcnow(), **values)
    log.info("run %s: %s%s", run_id, status, f" ({error_code}: {error_message})"
             if error_code else "")
    return status
