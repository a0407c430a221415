"""sweeps

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 02:00:00.000000

`sweeps` holds grid and random searches (POST /v1/sweeps); its children are ordinary runs
with `runs.sweep_id` (SET NULL: a run outlives its sweep's row) and `runs.sweep_parameters`
(the values the child's parameters took), both null for the runs made before. An index on
(sweep_id, status) serves a sweep's counts and the release of its pending children.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('method', sa.String(length=20), nullable=False),
    sa.Column('max_concurrent', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('metric', sa.String(length=40), nullable=False),
    sa.Column('goal', sa.String(length=20), nullable=False),
    sa.Column('early_stopping', sa.JSON(), nullable=True),
    sa.Column('runs_total', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=20), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_sweeps_tenant_id_tenants'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps'))
    )
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.create_index('ix_sweeps_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_sweeps_finished_at', ['finished_at'], unique=False)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sweep_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('sweep_parameters', sa.JSON(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_runs_sweep_id_sweeps'), 'sweeps', ['sweep_id'], ['id'], ondelete='SET NULL')
        batch_op.create_index('ix_runs_sweep_id_status', ['sweep_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_sweep_id_status')
        batch_op.drop_constraint(batch_op.f('fk_runs_sweep_id_sweeps'), type_='foreignkey')
        batch_op.drop_column('sweep_parameters')
        batch_op.drop_column('sweep_id')
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_index('ix_sweeps_finished_at')
        batch_op.drop_index('ix_sweeps_tenant_id_created_at_id')
    op.drop_table('sweeps')
