"""statistics packed one row per epoch, and thinned; rows counted; runs pinned

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 10:00:00.000000

- epoch_stats: one row per (run, phase, epoch) holding every layer's statistics, packed
  (service/statstore.py): `layout` names the layers and their arrays, `figures` holds the
  numbers as float32. It replaces layer_stats (a row per layer: 11 float columns and a JSON
  array of the arrays' statistics), whose rows move into it (and back on downgrade, as
  float64 of the float32 stored).
- runs.stats_thinned_after: the epoch past which the run's statistics are thinned; null for
  every run made before (their statistics are converted, none deleted).
- runs.rows_bytes: what the run's epoch and statistics rows count toward its tenant's
  stored bytes (service/usage.py), counted here for the runs there are.
- runs.pinned: a pinned run is kept whatever its age (retention: worker/retention.py), which
  takes the oldest finished runs first (ix_runs_finished_at).

Why (issue #19): a layer's statistics took about 820 bytes an epoch (639 of them the JSON),
so a run of 100,000 epochs stored 450 MB; packed they take about 100 (bench/STORAGE.md).
The conversion uses the service's own packing, so there is one definition of the form.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from alembic import op

from service import statstore, usage
from service.models import STAT_FIELDS

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ('run_id', 'phase', 'epoch')
BATCH = 5000  # rows read at a time

layer_stats = sa.table('layer_stats', *(sa.column(k) for k in (*KEY, 'layer', 'name')),
                       *(sa.column(f, sa.Float) for f in STAT_FIELDS),
                       sa.column('grad_norm_by_time', sa.JSON), sa.column('params', sa.JSON))
epoch_stats = sa.table('epoch_stats', *(sa.column(k) for k in KEY), sa.column('layout'),
                       sa.column('figures', sa.LargeBinary))


def upgrade() -> None:
    op.create_table('epoch_stats',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('layout', sa.Text(), nullable=False),
    sa.Column('figures', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_epoch_stats_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'phase', 'epoch', name=op.f('pk_epoch_stats'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stats_thinned_after', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('rows_bytes', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('pinned', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index('ix_runs_finished_at', ['finished_at'], unique=False)

    conn = op.get_bind()
    packed = ({**dict(zip(KEY, key)), **dict(zip(('layout', 'figures'), statstore.pack(
        [_engine_row(r) for r in rows])))} for key, rows in _epochs(conn, layer_stats, ('layer',)))
    _insert(conn, epoch_stats, packed)
    op.drop_table('layer_stats')
    runs, epochs = sa.table('runs', sa.column('id'), sa.column('rows_bytes')), sa.table(
        'epochs', sa.column('run_id'))
    epoch_rows = sa.select(sa.func.count()).where(epochs.c.run_id == runs.c.id).scalar_subquery()
    # service/usage.py's count, on this revision's tables (its own query follows the models).
    stats_bytes = (sa.select(sa.func.coalesce(sa.func.sum(
        usage.STATS_ROW_BYTES + sa.func.length(epoch_stats.c.layout)
        + sa.func.length(epoch_stats.c.figures)), 0))
        .where(epoch_stats.c.run_id == runs.c.id).scalar_subquery())
    conn.execute(sa.update(runs).values(
        rows_bytes=usage.EPOCH_ROW_BYTES * epoch_rows + stats_bytes))


def downgrade() -> None:
    op.create_table('layer_stats',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('layer', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    *(sa.Column(f, sa.Float(), nullable=True) for f in STAT_FIELDS),
    sa.Column('grad_norm_by_time', sa.JSON(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_layer_stats_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'phase', 'epoch', 'layer', name=op.f('pk_layer_stats'))
    )
    conn = op.get_bind()
    _insert(conn, layer_stats, ({'run_id': key[0], **row} for key, (stored,) in
                                _epochs(conn, epoch_stats, ()) for row in statstore.rows(stored)))
    op.drop_table('epoch_stats')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_finished_at')
        batch_op.drop_column('pinned')
        batch_op.drop_column('rows_bytes')
        batch_op.drop_column('stats_thinned_after')


def _insert(conn: sa.Connection, table: sa.TableClause, rows: Iterator[dict[str, Any]]) -> None:
    """INSERT the rows, BATCH at a time."""
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            conn.execute(sa.insert(table), batch)
            batch = []
    if batch:
        conn.execute(sa.insert(table), batch)


def _engine_row(row: sa.Row[Any]) -> dict[str, Any]:
    """An old layer_stats row in the form the engine reports it."""
    return {'layer': row.layer, 'name': row.name, **{f: getattr(row, f) for f in STAT_FIELDS},
            'grad_norm_by_time': row.grad_norm_by_time, 'params': row.params or []}


def _epochs(conn: sa.Connection, table: sa.TableClause, order: tuple[str, ...]
            ) -> Iterator[tuple[tuple[Any, ...], list[sa.Row[Any]]]]:
    """The table's rows grouped by (run, phase, epoch), read BATCH rows at a time in key
    order (an epoch's rows never span two reads: a read's last epoch waits for the next)."""
    key = [table.c[k] for k in KEY]
    after: tuple[Any, ...] | None = None
    while True:
        stmt = sa.select(table).order_by(*key, *(table.c[k] for k in order)).limit(BATCH)
        if after is not None:
            stmt = stmt.where(sa.tuple_(*key) > sa.tuple_(*after))
        rows = conn.execute(stmt).all()
        groups = [(k, list(g)) for k, g in groupby(rows, key=lambda r: tuple(r[:len(KEY)]))]
        if len(rows) == BATCH and len(groups) > 1:
            groups.pop()
        yield from groups
        if len(rows) < BATCH:
            return
        after = groups[-1][0]
