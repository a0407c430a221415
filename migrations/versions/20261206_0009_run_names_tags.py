"""runs: a name and tags

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-06 23:30:00.000000

`runs.name` (up to 200 characters, none for the runs made before) and `runs.tags` (a JSON
object of strings, `{}` for the runs made before), which GET /v1/runs filters on; an index
for a tenant's runs of one name.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sa.String(length=200), nullable=True))
        # The server default fills the existing rows with no tags.
        batch_op.add_column(sa.Column('tags', sa.JSON(), server_default=sa.text("'{}'"),
                                      nullable=False))
        batch_op.create_index('ix_runs_tenant_id_name', ['tenant_id', 'name'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_tenant_id_name')
        batch_op.drop_column('tags')
        batch_op.drop_column('name')
