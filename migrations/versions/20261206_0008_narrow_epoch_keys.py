"""epoch and statistics rows keyed by a run number, the phase as a small integer

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 23:00:00.000000

- runs.seq: a number naming the run in its epoch and statistics rows, unique; the runs there
  are get theirs here (PostgreSQL: from the new sequence `runs_seq`, which numbers the runs
  made later; SQLite: their rowid, and later runs one more than the largest).
- epochs, epoch_stats: keyed (run_seq, phase, epoch) instead of (run_id, phase, epoch), the
  phase stored as its index in service.models.PHASES (0 pretrain, 1 train), an epoch row's
  `layer` as a smallint; on SQLite WITHOUT ROWID (the key's b-tree holds the row). Their rows
  are copied over (and back on downgrade) by one INSERT ... SELECT each.

Why (issue #19): on PostgreSQL an epoch row took 203 bytes with its key's index, 75 of them
the 36-character run id in the row and in the index, so the 100,000-epoch demo stored 22 MB
against a bound of 20 (bench/STORAGE.md has the numbers after).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EPOCH_FIGURES = ('train_loss', 'val_loss', 'train_accuracy', 'val_accuracy', 'learning_rate',
                 'duration_s')
STATS_FIGURES = ('layout', 'figures')
PHASE_INDEX = "CASE {} WHEN 'pretrain' THEN 0 WHEN 'train' THEN 1 END"
PHASE_NAME = "CASE {} WHEN 0 THEN 'pretrain' WHEN 1 THEN 'train' END"


def _epoch_figures() -> list[sa.Column]:
    return [sa.Column(f, sa.Float(), nullable=f != 'duration_s') for f in EPOCH_FIGURES]


def _stats_figures() -> list[sa.Column]:
    return [sa.Column('layout', sa.Text(), nullable=False),
            sa.Column('figures', sa.LargeBinary(), nullable=False)]


def upgrade() -> None:
    pg = op.get_bind().dialect.name == 'postgresql'
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.Integer(), nullable=True))
    if pg:
        op.execute('CREATE SEQUENCE runs_seq OWNED BY runs.seq')
        op.execute("UPDATE runs SET seq = nextval('runs_seq')")
    else:
        op.execute('UPDATE runs SET seq = rowid')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.alter_column('seq', existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint(op.f('uq_runs_seq'), ['seq'])

    _aside('epochs')
    op.create_table('epochs',
    sa.Column('run_seq', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('phase', sa.SmallInteger(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=True),
    *_epoch_figures(),
    sa.ForeignKeyConstraint(['run_seq'], ['runs.seq'], name=op.f('fk_epochs_run_seq_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_seq', 'phase', 'epoch', name=op.f('pk_epochs')),
    sqlite_with_rowid=False
    )
    _aside('epoch_stats')
    op.create_table('epoch_stats',
    sa.Column('run_seq', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('phase', sa.SmallInteger(), nullable=False),
    *_stats_figures(),
    sa.ForeignKeyConstraint(['run_seq'], ['runs.seq'], name=op.f('fk_epoch_stats_run_seq_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_seq', 'phase', 'epoch', name=op.f('pk_epoch_stats')),
    sqlite_with_rowid=False
    )
    for table, figures in (('epochs', ('layer', *EPOCH_FIGURES)), ('epoch_stats', STATS_FIGURES)):
        rest = ', '.join(figures)
        op.execute(f"INSERT INTO {table} (run_seq, epoch, phase, {rest}) "
                   f"SELECT r.seq, o.epoch, {PHASE_INDEX.format('o.phase')}, "
                   f"{', '.join('o.' + f for f in figures)} "
                   f"FROM {table}_old o JOIN runs r ON r.id = o.run_id")
        op.drop_table(f'{table}_old')


def downgrade() -> None:
    _aside('epochs')
    op.create_table('epochs',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    *_epoch_figures(),
    sa.Column('layer', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_epochs_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'phase', 'epoch', name=op.f('pk_epochs'))
    )
    _aside('epoch_stats')
    op.create_table('epoch_stats',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    *_stats_figures(),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_epoch_stats_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'phase', 'epoch', name=op.f('pk_epoch_stats'))
    )
    for table, figures in (('epochs', ('layer', *EPOCH_FIGURES)), ('epoch_stats', STATS_FIGURES)):
        rest = ', '.join(figures)
        op.execute(f"INSERT INTO {table} (run_id, phase, epoch, {rest}) "
                   f"SELECT r.id, {PHASE_NAME.format('o.phase')}, o.epoch, "
                   f"{', '.join('o.' + f for f in figures)} "
                   f"FROM {table}_old o JOIN runs r ON r.seq = o.run_seq")
        op.drop_table(f'{table}_old')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('uq_runs_seq'), type_='unique')
        batch_op.drop_column('seq')  # and, on PostgreSQL, the sequence it owns


def _aside(table: str) -> None:
    """Rename the table to {table}_old (it is dropped once its rows are copied),
    with, on PostgreSQL, its primary key's index, whose name the new table takes."""
    op.rename_table(table, f'{table}_old')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'ALTER INDEX pk_{table} RENAME TO pk_{table}_old')
