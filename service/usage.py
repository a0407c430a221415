"""What a tenant stores: counted for its quota (TENANT_MAX_STORED_BYTES) and GET /v1/usage.

- data sets: their stored bytes (Dataset.size_bytes, the npz);
- weights: every artifact's bytes (initial, checkpoint, final, best), as the database
  measures the column (from the value's header: the bytes themselves are not read);
- predictions: each batch prediction's stored result (Prediction.result_bytes, its chunks'
  bytes, kept by the worker that writes them);
- rows: each run's epoch and statistics rows, kept on the run (Run.rows_bytes) by the
  worker that writes them, in the transaction that writes them: EPOCH_ROW_BYTES an epoch
  row, STATS_ROW_BYTES plus its packed layout and figures a statistics row: at least what
  PostgreSQL stores for them with their indexes (an epoch row takes about 135 there, 60 on
  SQLite: bench/STORAGE.md). The sizes stay fixed, so what a run counts does not change
  with how its rows are stored.

So a tenant's usage is four sums over its own rows, by index, never a scan of epoch rows;
exact for what is finished, and for a run in training as of its last flush.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.models import Artifact, Dataset, EpochStats, Prediction, Run, of_run

EPOCH_ROW_BYTES = 200
STATS_ROW_BYTES = 150


class Usage(NamedTuple):
    """A tenant's stored bytes, by kind, and what it has."""

    datasets: int
    weights: int
    rows: int
    predictions: int
    n_datasets: int
    n_runs: int
    n_predictions: int

    @property
    def total(self) -> int:
        return self.datasets + self.weights + self.rows + self.predictions


def stored(session: Session, tenant_id: str) -> Usage:
    n_datasets, datasets = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Dataset.size_bytes), 0))
        .where(Dataset.tenant_id == tenant_id)).one()
    n_runs, rows = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Run.rows_bytes), 0))
        .where(Run.tenant_id == tenant_id)).one()
    weights = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(Artifact.data)), 0))
        .join(Run, Run.id == Artifact.run_id).where(Run.tenant_id == tenant_id))
    n_predictions, predictions = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Prediction.result_bytes), 0))
        .where(Prediction.tenant_id == tenant_id)).one()
    return Usage(int(datasets), int(weights), int(rows), int(predictions), n_datasets, n_runs,
                 n_predictions)


def stats_bytes(run_id: sa.ColumnElement[str] | str) -> sa.ScalarSelect[int]:
    """SQL: what the run's statistics rows count."""
    size = STATS_ROW_BYTES + sa.func.length(EpochStats.layout) + sa.func.length(EpochStats.figures)
    return (sa.select(sa.func.coalesce(sa.func.sum(size), 0))
            .where(of_run(EpochStats, run_id)).scalar_subquery())


def record_rows(session: Session, run_id: str, epoch_rows: int) -> None:
    """Set what the run's rows count, once its writer has written `epoch_rows` epoch rows
    and its statistics rows (a sum over these: a phase keeps at most RUN_MAX_STATS_EPOCHS)."""
    session.execute(sa.update(Run).where(Run.id == run_id).values(
        rows_bytes=EPOCH_ROW_BYTES * epoch_rows + stats_bytes(run_id)),
        execution_options={"synchronize_session": False})
