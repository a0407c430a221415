"""Train one run: claim it, load its data and weights, run the engine, record the outcome.

Every write after the claim is fenced by the lease (worker/lease.py), so a worker that lost
the run writes nothing more. A run whose worker died is claimed again and resumes from its
last checkpoint, which may have been taken during autoencoder pretraining (then pretraining
goes on from there; a checkpoint taken while fine-tuning skips pretraining altogether); the
rows its predecessor flushed after that checkpoint are deleted at the claim and written
again by the resumed run, so every epoch, of either phase, appears exactly once. A worker
that is shutting down hands its run back to the queue from a fresh checkpoint
(worker/shutdown.py), and a write that fails on its database connection is tried again
(worker/progress.py). A run that needs more memory than its process may grow by
(worker/memory.py) fails with out_of_memory, wherever the allocation failed: loading its
data, training, or writing its outcome.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded
from flask import current_app
from sqlalchemy.orm import undefer

import nn
from service import dataio, logs, sweeps
from service.db import connection_lost, session_scope
from service.errors import size
from service.models import Artifact, Dataset, Epoch, Run, Sweep, of_run, utcnow
from service.queue import publish_run
from service.serialize import FINISHED_STATUSES, finite
from worker import lease, memory
from worker.progress import (
    CALIBRATED,
    SHUTDOWN,
    START,
    Progress,
    deadline,
    put_artifact,
)

log = logging.getLogger(__name__)

# Stop reasons of a run that ended well (perceptron: "converged" / "not_converged").
SUCCEEDED = (None, "early_stopping", "converged", "not_converged")
# What train_run returns when the run did not end here (see its docstring).
NOT_TRAINED = ("dropped", "settled", "lease_lost", "handed_back")


class InvalidData(Exception):
    """The run's data set, spec or initial weights no longer load: fail with invalid_data."""


@dataclass
class Claimed:
    """What the claim transaction read: the run to train and where to resume."""

    run_id: str
    dataset_id: str
    network: dict
    training: dict
    resume_phase: str  # where the stored checkpoint was taken; ("pretrain", 0) without one
    resume_epoch: int
    thinned_after: int | None  # the run's statistics thinning (service/statstore.py)
    epoch_rows: int  # its epoch rows, once those past the checkpoint are deleted


def train_run(run_id: str) -> str:
    """Claim and train `run_id`, in the app context. Returns the run's final status, or why
    it was not trained: "dropped" (not claimable), "settled" (ended by lease.settle_abandoned),
    "lease_lost" (taken over by another worker meanwhile, or given up after the database was
    unreachable for a whole lease, or out of memory even to record that), "handed_back" (this
    worker is shutting down). Never raises MemoryError: Celery's main process would raise it
    again and die."""
    with logs.bound(run_id=run_id):
        try:
            status = _claim_and_train(run_id)
        except MemoryError:
            log.error("run %s: out of memory while claiming it or recording that it ran out; "
                      "left to the reconciler", run_id)
            return "lease_lost"
        if status in FINISHED_STATUSES:
            _next_in_sweep(run_id)
        return status


def _next_in_sweep(run_id: str) -> None:
    """A sweep's child ended: release its sweep's next children and settle the sweep if it
    is done, in a transaction of its own after the run's last one. A failure here (the
    database, the broker) is left to the reconciler, which does the same every pass."""
    try:
        with session_scope() as session:
            sweep_id = session.scalar(sa.select(Run.sweep_id).where(Run.id == run_id))
            if sweep_id is None:
                return
            released = sweeps.release(session, sweep_id,
                                      int(current_app.config["TENANT_MAX_ACTIVE_RUNS"]))
            sweeps.settle(session, sweep_id)
        for child in released:
            publish_run(child)
    except Exception:  # noqa: BLE001 - the run itself is recorded; this is catch-up work
        log.warning("run %s: could not release its sweep's next children; the reconciler "
                    "will", run_id, exc_info=True)


def _claim_and_train(run_id: str) -> str:
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
        resume_phase, resume_epoch = session.execute(
            sa.select(Artifact.phase, Artifact.epoch)
            .where(Artifact.run_id == run_id, Artifact.kind == "checkpoint")
        ).one_or_none() or START
        lease.forget_after(session, run_id, resume_phase, resume_epoch)
        epoch_rows = session.scalar(sa.select(sa.func.count()).select_from(Epoch)
                                    .where(of_run(Epoch, run_id)))
        claimed = Claimed(run_id, run.dataset_id, run.network, run.training, resume_phase,
                          resume_epoch, run.stats_thinned_after, epoch_rows)
        sweep = session.get(Sweep, run.sweep_id) if run.sweep_id is not None else None
        asha = sweeps.Asha.of(sweep, run_id, run.epochs_total) if sweep is not None else None
        held = lease.Held(run_id, run.seq, token, cfg["LEASE_SECONDS"], cfg["FLUSH_SECONDS"],
                          cfg["CHECKPOINT_SECONDS"],
                          deadline(run.started_at, cfg["RUN_TIME_LIMIT_SECONDS"]),
                          cancel=run.cancel_requested)
        attempts = run.attempts
    logs.bind(dataset_id=claimed.dataset_id)
    log.info("run %s: claimed by %s (attempt %d, from %sepoch %d)", run_id, worker, attempts,
             "pretraining " if resume_phase == "pretrain" and resume_epoch else "", resume_epoch)
    train = resume_phase == "train"
    progress = Progress(held, epoch=resume_epoch if train else 0,
                        pretrained=0 if train else resume_epoch,
                        thinned_after=claimed.thinned_after, epoch_rows=claimed.epoch_rows,
                        asha=asha)
    if asha is not None:
        asha.decided = resume_epoch if train else 0  # rungs up to the checkpoint were passed
    try:
        try:
            result = _train(claimed, progress)
        except InvalidData as exc:
            return _finish(progress, None, status="failed", error_code="invalid_data",
                           error_message=str(exc))
        if result.stop_reason == SHUTDOWN:
            return _hand_back(progress, result)
        return _finish(progress, result, **_outcome(result))
    except lease.LeaseLost:
        log.warning("run %s: lease lost; stopped, wrote nothing more", run_id)
        return "lease_lost"
    except MemoryError as exc:
        # Recorded below, once this block has dropped the exception, its traceback and
        # with them the frames that held the run's arrays.
        detail = str(exc) or "MemoryError"
    except sa.exc.DBAPIError as exc:
        if not connection_lost(exc):
            return _failed(progress, exc)
        # Outside a flush (loading the data): the run stays ours until the lease expires;
        # then the reconciler republishes it and the next claim resumes it.
        log.warning("run %s: the database went away (%s); leaving the run to be resumed "
                    "once its lease expires", run_id, type(exc).__name__)
        return "lease_lost"
    except Exception as exc:
        return _failed(progress, exc)
    return _out_of_memory(progress, detail)


def _out_of_memory(progress: Progress, detail: str) -> str:
    """The run needed more memory than its process may take: it fails with out_of_memory,
    saying what to change, and the process gives back what the run left."""
    memory.release()
    limit = current_app.config["WORKER_MEMORY_LIMIT_BYTES"]
    allowed = (f"a run may take {size(limit)} (WORKER_MEMORY_LIMIT_BYTES)" if limit
               else "the machine has no more")
    message = (f"the run ran out of memory ({detail}); {allowed}: use a smaller "
               "training.batch_size (null is the whole data set at once), fewer or narrower "
               "layers, or fewer samples")
    try:
        return _finish(progress, None, status="failed", error_code="out_of_memory",
                       error_message=message)
    except lease.LeaseLost:
        log.warning("run %s: lease lost while recording that it ran out of memory",
                    progress.lease.run_id)
        return "lease_lost"


def _failed(progress: Progress, exc: Exception) -> str:
    """An unexpected error: the run fails visibly with it, and Celery logs the traceback."""
    timeout = isinstance(exc, SoftTimeLimitExceeded)
    try:
        _finish(progress, None, status="failed",
                error_code="timeout" if timeout else "internal_error",
                error_message=f"{type(exc).__name__}: {exc}")
    except lease.LeaseLost:
        log.warning("run %s: lease lost while recording the failure", progress.lease.run_id)
    raise exc


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
                            checkpoint_every=every, on_checkpoint=progress.on_checkpoint,
                            stats_epochs=progress.stats_epochs(), on_stats=progress.on_stats)
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
    except MemoryError:
        raise
    except Exception as exc:  # zipfile, KeyError, ValueError: all mean unreadable
        raise InvalidData(f"the stored data set does not load: {exc!r}") from exc
    checkpoint = artifacts.get("checkpoint")
    if checkpoint is not None and (checkpoint.phase, checkpoint.epoch) != (
            claimed.resume_phase, claimed.resume_epoch):
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
    way. The checkpoint is dropped: a finished run is never trained again (a new run may
    start from its final weights, init_from_run).
    A connection error is tried again every FLUSH_SECONDS while the lease may still be ours;
    each try first asks whether the failed COMMIT went through after all (its answer lost),
    and that question, when it fails on its connection too, is asked again the same way.
    """
    run_id = progress.lease.run_id
    retried = False
    while True:
        try:
            if retried and _recorded(run_id, status):
                break  # the COMMIT that failed on its connection had gone through
            with session_scope() as session:
                progress.write(session, final=True)
                if progress.lease.cancel:
                    # A cancel, or ASHA's stop: that one keeps its stopped_early error.
                    status, error_code, error_message = "cancelled", *_stop_note(session,
                                                                                 run_id)
                _final_writes(session, run_id, progress.lease.token, result, status=status,
                              error_code=error_code, error_message=error_message)
            break
        except sa.exc.DBAPIError as exc:
            if not connection_lost(exc):
                raise
            progress.failed(exc)  # raises LeaseLost once the lease has surely expired
            retried = True
            time.sleep(progress.lease.flush_seconds)
    log.info("run %s: %s%s", run_id, status, f" ({error_code}: {error_message})"
             if error_code else "")
    return status


def _stop_note(session: sa.orm.Session, run_id: str) -> tuple[str | None, str | None]:
    """(error_code, error_message) of a cancelled run: ASHA's stopped_early note if the
    sweep stopped it (service/sweeps.py), else none."""
    code, message = session.execute(sa.select(Run.error_code, Run.error_message)
                                    .where(Run.id == run_id)).one()
    return (code, message) if code == sweeps.STOPPED_EARLY else (None, None)


def _recorded(run_id: str, status: str) -> bool:
    """After a final COMMIT whose answer was lost: is the run finished as we wrote it? (Our
    worker name is on it and no later claim was made: a worker that took the run over
    would have put its own name.)"""
    with session_scope() as session:
        run = session.get(Run, run_id)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        return (run is not None and run.status == status and run.lease_token is None
                and run.worker == worker[:200])


def _final_writes(session: sa.orm.Session, run_id: str, token: str,
                  result: nn.TrainResult | None, **values: object) -> None:
    if result is not None:
        put_artifact(session, run_id, "final", result.epochs_completed, result.model.to_npz())
        if result.best_model is not None:
            put_artifact(session, run_id, "best", result.best_epoch or 0,
                         result.best_model.to_npz())
        values.update(metrics=finite(result.metrics), epochs_completed=result.epochs_completed)
    session.execute(sa.delete(Artifact).where(
        Artifact.run_id == run_id, Artifact.kind == "checkpoint"),
        execution_options=lease.NO_SYNC)
    lease.release(session, run_id, token, now=utcnow(), **values)


def _hand_back(progress: Progress, result: nn.TrainResult) -> str:
    """Shutting down: write the rows and the checkpoint of the epoch training stopped at,
    put the run back in the queue and wake another worker for it. A cancel requested
    meanwhile ends the run cancelled instead."""
    run_id = progress.lease.run_id
    with session_scope() as session:
        checkpoint = progress.write(session)
        if not progress.lease.cancel:
            lease.hand_back(session, run_id, progress.lease.token)
    progress.written(checkpoint)
    if progress.lease.cancel:
        return _finish(progress, result, status="cancelled")
    log.info("run %s: handed back to the queue at %s epoch %d, to resume from %s epoch %d",
             run_id, *progress.position, *progress.stored)
    try:
        publish_run(run_id)
    except Exception:  # noqa: BLE001 - the broker may be down; the reconciler republishes
        log.warning("run %s: could not publish it again; the reconciler will", run_id,
                    exc_info=True)
    return "handed_back"
