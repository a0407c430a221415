"""What one run may ask for, how many runs a tenant may have going at once, and how much it
may store.

The engine has its own fixed bounds (100 layers, 20 million parameters, 100000 epochs);
these are the service's, configurable (service/config.py) and checked on the built plan,
where every default is filled in, so they cannot be dodged by leaving a field out:

- RUN_MAX_LAYERS: layers in `network.layers`;
- RUN_MAX_UNITS: a layer's width (`units`, `filters`, `dim`, `ff_units`);
- RUN_MAX_PARAMS: trainable parameters;
- RUN_MAX_EPOCHS: `training.epochs`, and `training.pretrain.epochs` (per pretrained layer);
- RUN_MAX_MEMORY_BYTES: the run's estimated peak memory in its worker (nn/budget.py's
  estimate, plus the stored data set the worker reads before decoding it). The 422 names
  the field to change: `training.batch_size` when a smaller batch fits (its message says
  which), else the layer that needs the most (`network.layers[i].units` or its other width
  field), or `dataset_id` when the data set itself is most of it;
- RUN_TIME_LIMIT_SECONDS: a run whose estimated time on nn/budget.py's reference machine is
  over the limit it would be stopped at is refused, at `training.epochs` (or
  `training.pretrain.epochs` when pretraining takes most of it), with how many fit.

Data-set limits (rows, values per sample, bytes) are service/dataio.py's `Limits`. A tenant's
stored bytes (data sets, weights, rows) are capped by TENANT_MAX_STORED_BYTES
(check_stored_bytes; service/usage.py counts them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import nn
from nn.spec import layer_path, stacks
from service import usage
from service.errors import ApiError, size, validation_errors
from service.models import ACTIVE_STATUSES, Run, Tenant

WIDTHS = ("units", "filters", "dim", "ff_units")
# Retry-After of a 429 too_many_runs: a guess at when a slot frees (runs take seconds to hours).
RETRY_AFTER_SECONDS = 30
# The stored data set as the worker reads it, before and while decoding it: the database
# driver's copy and Python's bytes.
STORED_COPIES = 2


def layer_paths(plan: nn.Plan) -> list[tuple[str, dict[str, Any]]]:
    """(JSON path, spec) of every layer, in the plan's order (the encoder's first), e.g.
    ("network.decoder.layers[2]", {...})."""
    return [(layer_path(plan.encoder_layers, i), layer.spec) for i, layer in enumerate(plan.layers)]


def estimate(plan: nn.Plan, stored_bytes: int) -> nn.budget.Estimate:
    """The run's estimate in its worker: the engine's, and the stored data set's bytes."""
    est = nn.budget.estimate(plan)
    extra = STORED_COPIES * stored_bytes
    return dataclasses.replace(est, memory_bytes=est.memory_bytes + extra,
                               parts={**est.parts, "stored": extra})


def check_plan(plan: nn.Plan, stored_bytes: int, config: Mapping[str, Any]
               ) -> nn.budget.Estimate:
    """A 422 naming every field over the limits; else the run's estimate. stored_bytes:
    the data set's stored size (Dataset.size_bytes)."""
    errors = []
    max_layers = int(config["RUN_MAX_LAYERS"])
    for path, layers in stacks(plan.network):
        if len(layers) > max_layers:
            errors.append(_error(path, f"has {len(layers)} layers; the limit is {max_layers}"))
    max_units = int(config["RUN_MAX_UNITS"])
    for path, layer in layer_paths(plan):
        for field in WIDTHS:
            value = layer.get(field)
            if isinstance(value, int) and value > max_units:
                errors.append(_error(f"{path}.{field}", f"is {value}; the limit is {max_units}"))
    max_params = int(config["RUN_MAX_PARAMS"])
    if plan.n_params > max_params:
        errors.append(_error("network", f"has {plan.n_params} parameters; the limit is "
                                        f"{max_params}"))
    max_epochs = int(config["RUN_MAX_EPOCHS"])
    if plan.training["epochs"] > max_epochs:
        errors.append(_error("training.epochs", f"is {plan.training['epochs']}; the limit is "
                                                f"{max_epochs}"))
    pretrain = plan.training.get("pretrain")
    if pretrain and pretrain["epochs"] > max_epochs:
        errors.append(_error("training.pretrain.epochs",
                             f"is {pretrain['epochs']}; the limit is {max_epochs}"))
    if errors:                      # its estimate would only say again why it is too large
        raise validation_errors(errors)
    est = estimate(plan, stored_bytes)
    max_memory = int(config["RUN_MAX_MEMORY_BYTES"])
    if est.memory_bytes > max_memory:
        errors.append(_memory_error(plan, est, stored_bytes, max_memory))
    max_seconds = float(config["RUN_TIME_LIMIT_SECONDS"])
    if max_seconds > 0 and est.seconds > max_seconds:
        errors.append(_time_error(plan, est, max_seconds))
    if errors:
        raise validation_errors(errors)
    return est


def _memory_error(plan: nn.Plan, est: nn.budget.Estimate, stored_bytes: int, limit: int
                  ) -> dict[str, str]:
    """The field to change: the batch when a smaller one fits, else the largest layer, or
    the data set when it is most of the peak."""
    need = (f"the run would need about {size(est.memory_bytes)} of memory at its peak; the "
            f"limit is {size(limit)} (RUN_MAX_MEMORY_BYTES)")
    batch = nn.budget.batch_rows(plan)
    if batch > 1 and _memory(plan, 1, stored_bytes) <= limit:
        lo, hi = 1, batch                      # the largest batch that fits, by bisection
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _memory(plan, mid, stored_bytes) <= limit else (lo, mid)
        return _error("training.batch_size", f"{need}; a batch of {batch} samples takes "
                                             f"{size(est.parts['batch'])} of it: use a "
                                             f"batch_size of at most {lo}")
    data = est.parts["data"] + est.parts["stored"]
    i = max(range(len(est.layers)), key=est.layers.__getitem__)
    if data >= est.layers[i]:
        return _error("dataset_id", f"{need}; the data set and its copies take "
                                    f"{size(data)} of it: use a smaller data set")
    path, spec = layer_paths(plan)[i]
    field = next((f".{w}" for w in WIDTHS if w in spec), "")
    return _error(f"{path}{field}",
                  f"{need}; this {spec['type']} layer takes {size(est.layers[i])} of it "
                  f"(its parameters with their copies, and its activations for "
                  f"{batch} samples)")


def _memory(plan: nn.Plan, batch_size: int, stored_bytes: int) -> int:
    return estimate(nn.budget.with_training(plan, batch_size=batch_size),
                    stored_bytes).memory_bytes


def _time_error(plan: nn.Plan, est: nn.budget.Estimate, limit: float) -> dict[str, str]:
    """At training.epochs, with how many fit (the time is affine in the epochs), or at
    training.pretrain.epochs when pretraining takes most of it."""
    need = (f"the run would take about {_duration(est.seconds)} ({est.multiply_adds:.3g} "
            f"multiply-adds in {est.steps:.3g} batches) on the reference machine; the limit "
            f"is {_duration(limit)} (RUN_TIME_LIMIT_SECONDS)")
    pretrain = plan.training.get("pretrain")
    pretraining = pretrain is not None and 2 * nn.budget.estimate(
        nn.budget.with_training(plan, pretrain=None)).seconds < est.seconds

    def seconds(epochs: int) -> float:
        change = {"pretrain": {**pretrain, "epochs": epochs}} if pretraining else \
            {"epochs": epochs}
        return nn.budget.estimate(nn.budget.with_training(plan, **change)).seconds

    one, two = seconds(1), seconds(2)
    fit = math.floor((limit - (2 * one - two)) / (two - one)) if two > one else 0
    advice = f"at most {fit} epochs fit" if fit >= 1 else \
        f"even one epoch takes about {_duration(one)}: use fewer samples or a smaller network"
    return _error("training.pretrain.epochs" if pretraining else "training.epochs",
                  f"{need}: {advice}")


def _duration(seconds: float) -> str:
    """12 s, 4.5 minutes, 20.3 hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.1f} hours"


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise what one tenant creates: call it inside the creating transaction, after the
    new rows are flushed. On PostgreSQL the tenant's row is locked here, so concurrent
    creations by one tenant count one after the other; on SQLite the flush took the
    database's one write lock."""
    # FOR NO KEY UPDATE: serialises this tenant's creations without waiting for the KEY SHARE
    # locks that inserting rows referencing the tenant take (FOR UPDATE would, and two
    # creations would deadlock).
    session.execute(
        sa.select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    )


def check_active_runs(session: Session, tenant_id: str, config: Mapping[str, Any]) -> None:
    """A 429 when the tenant already has TENANT_MAX_ACTIVE_RUNS queued, running or cancelling
    runs, counting the one being created (flushed; see lock_tenant)."""
    lock_tenant(session, tenant_id)
    limit = int(config["TENANT_MAX_ACTIVE_RUNS"])
    active = session.scalar(
        sa.select(sa.func.count()).select_from(Run)
        .where(Run.tenant_id == tenant_id, Run.status.in_(ACTIVE_STATUSES))
    )
    if active > limit:
        raise ApiError(
            429, "too_many_runs",
            f"this tenant already has {active - 1} queued, running or cancelling runs; the "
            f"limit is {limit}: wait for one to finish, or cancel one",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            limit=limit,
        )


def check_stored_bytes(session: Session, tenant_id: str, config: Mapping[str, Any],
                       coming: int = 0) -> None:
    """A 403 quota_exceeded when the tenant's stored bytes (service/usage.py), counting what
    is being created (flushed; see lock_tenant) and `coming` bytes it will store, are over
    TENANT_MAX_STORED_BYTES (0: no quota). A run counts its initial weights here; its rows
    and weights come as it trains, and a run that crosses the quota is not stopped: the next
    creation is refused. A batch prediction counts its result's estimated size as `coming`."""
    limit = int(config["TENANT_MAX_STORED_BYTES"])
    if limit <= 0:
        return
    lock_tenant(session, tenant_id)
    used = usage.stored(session, tenant_id).total + coming
    if used > limit:
        raise ApiError(
            403, "quota_exceeded",
            f"this tenant would store {used} bytes; its quota (TENANT_MAX_STORED_BYTES) is "
            f"{limit}: delete runs or data sets first (GET /v1/usage)",
            quota="stored_bytes", limit=limit, used=used,
        )


def _error(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}

