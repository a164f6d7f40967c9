"""batch counters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 08:54:24.394327
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.core.tables

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # server_default lets the columns be added to tables that already hold rows.
    op.add_column('batches', sa.Column('n_queued', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('batches', sa.Column('n_running', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('batches', sa.Column('n_succeeded', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('batches', sa.Column('n_failed', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('batches', sa.Column('n_canceled', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('batches', sa.Column('input_format', sa.String(length=8), nullable=False, server_default='jsonl'))
    op.add_column('batches', sa.Column('started_at', service.core.tables.UTCDateTime(timezone=True), nullable=True))
    # ### end Alembic commands ###


def downgrade() -> None:
    # server_default lets the columns be added to tables that already hold rows.
    op.drop_column('batches', 'started_at')
    op.drop_column('batches', 'input_format')
    op.drop_column('batches', 'n_canceled')
    op.drop_column('batches', 'n_failed')
    op.drop_column('batches', 'n_succeeded')
    op.drop_column('batches', 'n_running')
    op.drop_column('batches', 'n_queued')
    # ### end Alembic commands ###
