"""model aliases and batch predictions

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-06 23:00:00.000000

`model_aliases` names a run's final or best weights per tenant (PUT /v1/models/{name}); its
run's foreign key is RESTRICT, so an aliased run cannot be deleted. `model_versions` keeps
where each alias pointed. New tables only: no existing row changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('model_aliases',
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('weights', sa.String(length=20), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_model_aliases_run_id_runs'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_model_aliases_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'name', name=op.f('pk_model_aliases'))
    )
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_aliases_run_id'), ['run_id'], unique=False)
    op.create_table('model_versions',
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('weights', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'name'], ['model_aliases.tenant_id', 'model_aliases.name'], name=op.f('fk_model_versions_tenant_id_model_aliases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'name', 'version', name=op.f('pk_model_versions'))
    )


def downgrade() -> None:
    op.drop_table('model_versions')
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_aliases_run_id'))
    op.drop_table('model_aliases')
