"""model aliases and batch predictions

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-06 23:00:00.000000

`model_aliases` names a run's final or best weights per tenant (PUT /v1/models/{name}); its
run's foreign key is RESTRICT, so an aliased run cannot be deleted. `model_versions` keeps
where each alias pointed. `predictions` holds batch prediction jobs (leased like runs) and
`prediction_chunks` their results, a chunk of rows each. New tables only: no existing row
changes, and a downgrade drops them with what they hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
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

    op.create_table('predictions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('weights', sa.String(length=20), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('rows_total', sa.Integer(), nullable=False),
    sa.Column('rows_done', sa.Integer(), nullable=False),
    sa.Column('chunk_rows', sa.Integer(), nullable=False),
    sa.Column('classes', sa.JSON(), nullable=True),
    sa.Column('result_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error_code', sa.String(length=40), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('lease_token', sa.String(length=36), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_predictions_dataset_id_datasets'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_predictions_tenant_id_tenants'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_predictions'))
    )
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_predictions_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_predictions_status'), ['status'], unique=False)
        batch_op.create_index('ix_predictions_tenant_id_created_at_id', ['tenant_id', 'created_at', 'id'], unique=False)
    op.create_table('prediction_chunks',
    sa.Column('prediction_id', sa.String(length=36), nullable=False),
    sa.Column('chunk', sa.Integer(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['prediction_id'], ['predictions.id'], name=op.f('fk_prediction_chunks_prediction_id_predictions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('prediction_id', 'chunk', name=op.f('pk_prediction_chunks'))
    )


def downgrade() -> None:
    op.drop_table('prediction_chunks')
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index('ix_predictions_tenant_id_created_at_id')
        batch_op.drop_index(batch_op.f('ix_predictions_status'))
        batch_op.drop_index(batch_op.f('ix_predictions_dataset_id'))
    op.drop_table('predictions')
    op.drop_table('model_versions')
    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_aliases_run_id'))
    op.drop_table('model_aliases')
