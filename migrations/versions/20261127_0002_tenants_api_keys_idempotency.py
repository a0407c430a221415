"""tenants, API keys, idempotency keys; data sets and runs belong to a tenant

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 22:10:24.565924

Rows that exist before this revision are given to a tenant named "default" (created only
when there are such rows), so nothing is orphaned; `backprop create-key --tenant default`
then gives access to them. The tenant column is added nullable, filled, then made NOT NULL
(SQLite through batch table copies).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, UTC

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT = "default"


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants')),
    sa.UniqueConstraint('name', name=op.f('uq_tenants_name'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('key_sha256', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=20), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_api_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_sha256', name=op.f('uq_api_keys_key_sha256'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_idempotency_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'key', name=op.f('pk_idempotency_keys'))
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False)

    # The tenant column: nullable, filled with the "default" tenant, then NOT NULL.
    for table in ('datasets', 'runs'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('tenant_id', sa.String(length=36), nullable=True))
    _adopt_existing_rows()

    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.alter_column('tenant_id', existing_type=sa.String(length=36), nullable=False)
        batch_op.drop_index('ix_datasets_created_at_id')
        batch_op.create_index('ix_datasets_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_datasets_tenant_id_tenants'), 'tenants', ['tenant_id'], ['id'], ondelete='RESTRICT')

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.alter_column('tenant_id', existing_type=sa.String(length=36), nullable=False)
        batch_op.drop_index('ix_runs_created_at_id')
        batch_op.create_index('ix_runs_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_runs_tenant_id_status', ['tenant_id', 'status'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_runs_tenant_id_tenants'), 'tenants', ['tenant_id'], ['id'], ondelete='RESTRICT')


def _adopt_existing_rows() -> None:
    """Give every existing data set and run to the tenant "default" (made if needed)."""
    conn = op.get_bind()
    datasets = sa.table('datasets', sa.column('tenant_id', sa.String))
    runs = sa.table('runs', sa.column('tenant_id', sa.String))
    existing = sum(
        conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
        for t in (datasets, runs)
    )
    if not existing:
        return
    tenants = sa.table('tenants', sa.column('id', sa.String), sa.column('name', sa.String),
                       sa.column('created_at', sa.DateTime(timezone=True)))
    tenant_id = str(uuid.uuid4())
    conn.execute(sa.insert(tenants).values(id=tenant_id, name=DEFAULT_TENANT,
                                           created_at=datetime.now(UTC)))
    for t in (datasets, runs):
        conn.execute(sa.update(t).values(tenant_id=tenant_id))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_runs_tenant_id_tenants'), type_='foreignkey')
        batch_op.drop_index('ix_runs_tenant_id_status')
        batch_op.drop_index('ix_runs_tenant_id_created_at_id')
        batch_op.create_index('ix_runs_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.drop_column('tenant_id')

    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_datasets_tenant_id_tenants'), type_='foreignkey')
        batch_op.drop_index('ix_datasets_tenant_id_created_at_id')
        batch_op.create_index('ix_datasets_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.drop_column('tenant_id')

    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))

    op.drop_table('idempotency_keys')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_tenant_id'))

    op.drop_table('api_keys')
    op.drop_table('tenants')
