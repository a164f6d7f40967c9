"""jobs.data_removed_at: when retention (or DELETE) removed a job's stored data

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:20:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.core.tables

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('data_removed_at', service.core.tables.UTCDateTime(timezone=True), nullable=True))
    op.create_index('ix_jobs_retention', 'jobs', ['data_removed_at', 'completed_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_retention', table_name='jobs')
    op.drop_column('jobs', 'data_removed_at')
