"""openai_batches: a partial index of the open batches, for the dispatcher's tick

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 16:30:00.000000

The dispatcher now expires and finalizes OpenAI batches on its own, every sweep; it
looks only at records not yet finalized that have a batch of ours, which this index
holds, so a tick costs the open batches, not the table's history.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text('finalized_at IS NULL AND batch_id IS NOT NULL')


def upgrade() -> None:
    op.create_index('ix_openai_batches_open', 'openai_batches', ['expires_at'], unique=False,
                    postgresql_where=_OPEN, sqlite_where=_OPEN)


def downgrade() -> None:
    op.drop_index('ix_openai_batches_open', table_name='openai_batches')
