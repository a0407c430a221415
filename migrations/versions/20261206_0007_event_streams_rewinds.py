"""event streams: the open streams per tenant, and the rewinds of a resumed run

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 10:00:00.000000

`event_streams` counts the open GET /v1/runs/{run_id}/events streams of each tenant across
API processes; `runs.rewinds` records where each claim that discarded rows went back to, so
a stream can tell its client which rows were replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('event_streams',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_event_streams_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_streams'))
    )
    with op.batch_alter_table('event_streams', schema=None) as batch_op:
        batch_op.create_index('ix_event_streams_tenant_id_seen_at', ['tenant_id', 'seen_at'], unique=False)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rewinds', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('rewinds')
    with op.batch_alter_table('event_streams', schema=None) as batch_op:
        batch_op.drop_index('ix_event_streams_tenant_id_seen_at')
    op.drop_table('event_streams')
