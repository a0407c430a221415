"""Rows made the way the API makes them: the data set stored by service.dataio, the spec
normalised by nn.build, so the worker meets exactly what it meets in production.
Call these inside the app context."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import current_app

import nn
from service import auth, dataio, db
from service.models import Artifact, Dataset, Run

XOR_NET = {"layers": [{"type": "dense", "units": 4, "activation": "sigmoid"},
                      {"type": "dense", "units": 1, "activation": "sigmoid"}]}
XOR_TRAINING = {"loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 0.5},
                "batch_size": 1, "epochs": 20, "seed": 1}


def tenant(name: str = "test") -> str:
    """The id of the tenant `name` (made on first use)."""
    with db.session_scope() as session:
        return auth.tenant_named(session, name, create=True).id


def add_dataset(kind: str = "xor", n_samples: int = 100, *, regression: bool = False,
                tenant_id: str | None = None) -> str:
    inputs, targets = nn.generate(kind, n_samples, 0, seed=1)
    if regression:
        targets = targets.astype(float) * 10.0
    info = nn.describe(inputs, targets)
    data = dataio.encode(inputs, targets)
    row = Dataset(tenant_id=tenant_id or tenant(), name=kind, n_samples=len(inputs),
                  input_shape=list(info.input_shape), task=info.task, classes=info.classes,
                  target_dim=info.target_dim,
                  sha256=dataio.sha256(data), source={"generator": kind},
                  size_bytes=len(data), data=data)
    with db.session_scope() as session:
        session.add(row)
    return row.id


def add_run(dataset_id: str, network: dict | None = None, training: dict | None = None,
            *, initial: bytes | None = None, **columns: Any) -> str:
    """A queued run (or whatever `columns` say), its spec normalised against the data."""
    with db.session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        info = nn.describe(*dataio.decode(dataset.data), task=dataset.task)
        plan = nn.build(network or XOR_NET, {**XOR_TRAINING, **(training or {})}, info)
        run = Run(tenant_id=dataset.tenant_id, dataset_id=dataset_id,
                  network=plan.network, training=plan.training,
                  epochs_total=plan.epochs_total, **columns)
        session.add(run)
        session.flush()
        if initial is not None:
            session.add(Artifact(run_id=run.id, kind="initial", epoch=0, data=initial))
    return run.id


def get_run(run_id: str) -> Run:
    with db.session_scope() as session:
        return session.get(Run, run_id)


def set_run(run_id: str, **values: Any) -> None:
    with db.session_scope() as session:
        session.execute(sa.update(Run).where(Run.id == run_id).values(**values))


def in_context(fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` wrapped to run in this app's context (for a thread: contexts are per thread)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run() -> Any:
        with app.app_context():
            return fn()

    return run
