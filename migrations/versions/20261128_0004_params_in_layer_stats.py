"""per-array statistics as a JSON column of their layer-stats row

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 12:00:00.000000

- layer_stats.params: the layer's weight arrays' statistics, [{"param": "W", "grad_mean_abs":
  ..., "weight_std": ...}, ...] in the layer's order (the shape GET .../layer-stats returns).
- param_stats is dropped; its rows move into layer_stats.params (and back on downgrade).

Why (issue #6): a row per array, each checked against its layer-stats row by a foreign key,
was most of what PostgreSQL did per epoch: a 2-4-1 net's epoch wrote 7 rows, 4 of them
per-array ones, and its flush took about 120 us per epoch instead of about 50 without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIELDS = ('grad_mean_abs', 'grad_norm', 'grad_max_abs', 'grad_std',
          'weight_mean_abs', 'weight_norm', 'weight_max_abs', 'weight_std')
KEY = ('run_id', 'phase', 'epoch', 'layer')
BATCH = 1000

layer_stats = sa.table('layer_stats', *(sa.column(k) for k in KEY),
                       sa.column('params', sa.JSON))
param_stats = sa.table('param_stats', *(sa.column(k) for k in KEY), sa.column('param'),
                       sa.column('position'), *(sa.column(f) for f in FIELDS))


def _param_stats_table() -> None:
    op.create_table('param_stats',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('layer', sa.Integer(), nullable=False),
    sa.Column('param', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    *(sa.Column(f, sa.Float(), nullable=True) for f in FIELDS),
    sa.ForeignKeyConstraint(['run_id', 'phase', 'epoch', 'layer'], ['layer_stats.run_id', 'layer_stats.phase', 'layer_stats.epoch', 'layer_stats.layer'], name=op.f('fk_param_stats_run_id_layer_stats'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'phase', 'epoch', 'layer', 'param', name=op.f('pk_param_stats'))
    )


def upgrade() -> None:
    # (param_stats is read before layer_stats changes: see downgrade())
    conn = op.get_bind()
    rows = conn.execute(sa.select(param_stats).order_by(*(param_stats.c[k] for k in KEY),
                                                        param_stats.c.position)).all()
    values = [{**{f'k_{k}': v for k, v in zip(KEY, key)}, 'p': [
        {'param': r.param, **{f: getattr(r, f) for f in FIELDS}} for r in group]}
        for key, group in groupby(rows, key=lambda r: tuple(r[:4]))]
    with op.batch_alter_table('layer_stats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('params', sa.JSON(), nullable=True))
    op.drop_table('param_stats')
    update = sa.update(layer_stats).where(
        *(layer_stats.c[k] == sa.bindparam(f'k_{k}') for k in KEY)).values(
        params=sa.bindparam('p', type_=sa.JSON))
    for start in range(0, len(values), BATCH):
        conn.execute(update, values[start:start + BATCH])


def downgrade() -> None:
    # (read first: on SQLite dropping the column rebuilds layer_stats, whose old copy's
    # DROP would cascade to param_stats rows inserted before it)
    conn = op.get_bind()
    rows = [{**dict(zip(KEY, row[:4])), 'param': p['param'], 'position': position,
             **{f: p.get(f) for f in FIELDS}}
            for row in conn.execute(sa.select(layer_stats).where(layer_stats.c.params.is_not(None)))
            for position, p in enumerate(row.params or ())]
    with op.batch_alter_table('layer_stats', schema=None) as batch_op:
        batch_op.drop_column('params')
    _param_stats_table()
    for start in range(0, len(rows), BATCH):
        conn.execute(sa.insert(param_stats), rows[start:start + BATCH])
