"""epochs: whole-sequence exact match

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 02:30:00.000000

`epochs.train_exact_match` and `epochs.val_exact_match`: the fraction of sequences whose
every non-PAD target token is right, for seq2seq runs; null for other runs and for the rows
made before. Nullable columns added at the end: no existing row is rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not a batch's table copy: SQLite (3.35+) adds and drops a column in
# place, which keeps the table WITHOUT ROWID (a copy would not).
def upgrade() -> None:
    op.add_column('epochs', sa.Column('train_exact_match', sa.Float(), nullable=True))
    op.add_column('epochs', sa.Column('val_exact_match', sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column('epochs', 'val_exact_match')
    op.drop_column('epochs', 'train_exact_match')
