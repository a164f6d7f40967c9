"""live_events: job event log of the embedded mode (no Redis)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import service.core.tables

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'live_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('stream', sa.String(length=40), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
        sa.Column('expires_at', service.core.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sqlite_autoincrement=True,
    )
    op.create_index('ix_live_events_stream', 'live_events', ['stream', 'id'], unique=False)
    op.create_index('ix_live_events_expires', 'live_events', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_live_events_expires', table_name='live_events')
    op.drop_index('ix_live_events_stream', table_name='live_events')
    op.drop_table('live_events')
