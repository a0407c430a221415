"""What one run may ask for, and how many runs a tenant may have going at once.

The engine has its own fixed bounds (100 layers, 20 million parameters, 100000 epochs);
these are the service's, configurable (service/config.py) and checked on the built plan,
where every default is filled in, so they cannot be dodged by leaving a field out:

- RUN_MAX_LAYERS: layers in `network.layers`;
- RUN_MAX_UNITS: a layer's width (`units`, `filters`, `dim`, `ff_units`);
- RUN_MAX_PARAMS: trainable parameters;
- RUN_MAX_EPOCHS: `training.epochs`, and `training.pretrain.epochs` (per pretrained layer);
- RUN_MAX_COMPUTE: the estimated compute,
  (training epochs + pretraining epochs) x samples in the data set x parameters,
  about the multiply-adds of the forward passes (a dense layer does one per weight per
  sample); the backward pass costs about twice that again. A 422 at `training.epochs`,
  the knob that is usually turned.

Data-set limits (rows, values per sample, bytes) are service/dataio.py's `Limits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import nn
from service.errors import ApiError, validation_errors
from service.models import ACTIVE_STATUSES, Run, Tenant

WIDTHS = ("units", "filters", "dim", "ff_units")
# Retry-After of a 429 too_many_runs: a guess at when a slot frees (runs take seconds to hours).
RETRY_AFTER_SECONDS = 30


def compute(plan: nn.Plan, n_samples: int) -> int:
    """The run's estimated compute (see the module docstring)."""
    return (plan.epochs_total + plan.pretrain_epochs_total) * n_samples * plan.n_params


def check_plan(plan: nn.Plan, n_samples: int, config: Mapping[str, Any]) -> None:
    """A 422 naming every field over the limits."""
    errors = []
    layers = plan.network["layers"]
    max_layers = int(config["RUN_MAX_LAYERS"])
    if len(layers) > max_layers:
        errors.append(_error("network.layers", f"has {len(layers)} layers; the limit is "
                                               f"{max_layers}"))
    max_units = int(config["RUN_MAX_UNITS"])
    for i, layer in enumerate(layers):
        for field in WIDTHS:
            value = layer.get(field)
            if isinstance(value, int) and value > max_units:
                errors.append(_error(f"network.layers[{i}].{field}",
                                     f"is {value}; the limit is {max_units}"))
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
    estimate, max_compute = compute(plan, n_samples), int(float(config["RUN_MAX_COMPUTE"]))
    if estimate > max_compute:
        epochs = plan.epochs_total + plan.pretrain_epochs_total
        errors.append(_error(
            "training.epochs",
            f"the run's estimated compute, {epochs} epochs x {n_samples} samples x "
            f"{plan.n_params} parameters = {estimate:.3g}, is over the limit of "
            f"{max_compute:.3g}: use fewer epochs, a smaller network or fewer samples",
        ))
    if errors:
        raise validation_errors(errors)


def check_active_runs(session: Session, tenant_id: str, config: Mapping[str, Any]) -> None:
    """A 429 when the tenant already has TENANT_MAX_ACTIVE_RUNS queued, running or cancelling
    runs, counting the one being created.

    Call it inside the transaction that creates the run, after the run's row is flushed: on
    PostgreSQL the tenant's row is locked here, so concurrent creations by one tenant count
    one after the other; on SQLite the flush took the database's one write lock.
    """
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


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise the counting transactions of one tenant until the transaction ends: on
    PostgreSQL by locking its row; on SQLite the caller's flushed INSERT already holds the
    database's one write lock."""
    # FOR NO KEY UPDATE: without waiting for the KEY SHARE locks that inserting rows
    # referencing the tenant take (FOR UPDATE would, and two creations would deadlock).
    session.execute(
        sa.select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    )


def _error(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}
