"""per-array statistics, gradient norm by time step, pretraining epochs and checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00.000000

- param_stats: one row per weight array of a layer-stats row (key (run, phase, epoch, layer,
  param), `position` keeps the layer's order), deleted with its layer-stats row (and so
  with its run) by ON DELETE CASCADE.
- layer_stats.grad_norm_by_time: rnn and lstm rows' [||dL/dh_t|| for t = 1..T] (JSON).
- epochs.layer: the layer a pretraining epoch pretrained (null for training epochs).
- artifacts.phase: a checkpoint taken during pretraining is ("pretrain", p); existing rows
  are "train", as every checkpoint stored before this revision was. The downgrade deletes
  pretraining checkpoints, which older workers would mistake for training ones: such a run
  then starts over (its rows are deleted at the claim and written again).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('param_stats',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('layer', sa.Integer(), nullable=False),
    sa.Column('param', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('grad_mean_abs', sa.Float(), nullable=True),
    sa.Column('grad_norm', sa.Float(), nullable=True),
    sa.Column('grad_max_abs', sa.Float(), nullable=True),
    sa.Column('grad_std', sa.Float(), nullable=True),
    sa.Column('weight_mean_abs', sa.Float(), nullable=True),
    sa.Column('weight_norm', sa.Float(), nullable=True),
    sa.Column('weight_max_abs', sa.Float(), nullable=True),
    sa.Column('weight_std', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id', 'phase', 'epoch', 'layer'], ['layer_stats.run_id', 'layer_stats.phase', 'layer_stats.epoch', 'layer_stats.layer'], name=op.f('fk_param_stats_run_id_layer_stats'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'phase', 'epoch', 'layer', 'param', name=op.f('pk_param_stats'))
    )
    with op.batch_alter_table('layer_stats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('grad_norm_by_time', sa.JSON(), nullable=True))

    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('layer', sa.Integer(), nullable=True))

    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phase', sa.String(length=20), server_default='train', nullable=False))


def downgrade() -> None:
    op.drop_table('param_stats')
    artifacts = sa.table('artifacts', sa.column('kind', sa.String), sa.column('phase', sa.String))
    op.execute(sa.delete(artifacts).where(artifacts.c.kind == 'checkpoint',
                                          artifacts.c.phase == 'pretrain'))
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_column('phase')

    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.drop_column('layer')

    with op.batch_alter_table('layer_stats', schema=None) as batch_op:
        batch_op.drop_column('grad_norm_by_time')
