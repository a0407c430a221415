"""A sweep's children trained by the worker's own code (SQLite and PostgreSQL): ASHA's rung
decision is made in the flush that writes the rung's row and ends a weaker child
cancelled with stopped_early; the worker that finishes a child releases the next one and
settles the sweep; the reconciler releases what a dead worker left held."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask

from service import db, sweeps
from service.models import Epoch, Run, Sweep, of_run, utcnow
from tests.worker.rows import add_run, get_run, tenant
from worker import reconcile
from worker.training import train_run


def _sweep(dataset: str, rates: list[float], *, early: dict[str, Any] | None = None,
           max_concurrent: int = 1, epochs: int = 40) -> tuple[str, list[str]]:
    """A sweep row and its pending children, one per learning rate, as the API makes them."""
    sweep = Sweep(tenant_id=tenant(), name=None, tags={}, created_at=utcnow(),
                  dataset_id=dataset, spec={"network": {}, "training": {}},
                  parameters={"training.optimizer.learning_rate": rates}, method="grid",
                  max_concurrent=max_concurrent, seed=None, metric="train_loss",
                  goal="minimize", early_stopping=early, runs_total=len(rates),
                  cancel_requested=False)
    with db.session_scope() as session:
        session.add(sweep)
    children = [add_run(dataset, training={"epochs": epochs,
                                           "optimizer": {"type": "sgd", "learning_rate": lr}},
                        status="pending", sweep_id=sweep.id,
                        sweep_parameters={"training.optimizer.learning_rate": lr})
                for lr in rates]
    return sweep.id, children


def _release(sweep_id: str, app: Flask) -> list[str]:
    with db.session_scope() as session:
        return sweeps.release(session, sweep_id, app.config["TENANT_MAX_ACTIVE_RUNS"])


def test_asha_stops_the_weaker_child_at_its_rung(app: Flask, dataset: str) -> None:
    sweep_id, (strong, weak) = _sweep(dataset, [2.0, 0.001], max_concurrent=1,
                                      early={"type": "asha", "min_epochs": 5,
                                             "reduction_factor": 2})
    assert _release(sweep_id, app) == [strong]
    assert train_run(strong) == "succeeded"  # the first at each rung goes on
    # the worker that finished it released the next child (and nothing settled yet)
    assert get_run(weak).status == "queued"
    assert train_run(weak) == "cancelled"
    run = get_run(weak)
    assert (run.error_code, run.cancel_requested) == ("stopped_early", True)
    assert "at epoch 5" in run.error_message
    # decided in the flush that wrote epoch 5 (forced at the rung): it stopped right there
    assert run.epochs_completed == 5 and run.metrics["epochs_completed"] == 5
    with db.session_scope() as session:
        epochs = session.scalars(sa.select(Epoch.epoch).where(of_run(Epoch, weak))).all()
        assert max(epochs) == 5
        settled = session.get(Sweep, sweep_id)
        assert (settled.outcome, settled.finished_at is not None) == ("succeeded", True)


def test_the_reconciler_releases_what_a_dead_worker_left_and_settles(app: Flask,
                                                                     dataset: str) -> None:
    sweep_id, children = _sweep(dataset, [0.5, 1.0, 2.0], max_concurrent=2, epochs=5)
    assert _release(sweep_id, app) == children[:2]
    for child in children[:2]:
        # trained, but the worker "died" before releasing: the run's own rows only
        with db.session_scope() as session:
            session.execute(sa.update(Run).where(Run.id == child).values(
                status="succeeded", finished_at=utcnow(), metrics={"train_loss": 0.1}))
    assert get_run(children[2]).status == "pending"
    reconcile.reconcile()
    assert get_run(children[2]).status == "queued"
    assert train_run(children[2]) == "succeeded"
    reconcile.reconcile()
    with db.session_scope() as session:
        assert session.get(Sweep, sweep_id).outcome == "succeeded"
