"""queue_counts: queued jobs per model and lane, kept with every status change

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 13:30:00.000000

The counts start from the jobs queued now. The jobs table is locked against writes
while they are read, so the start is exact even if old processes still run; stop
the old API and workers before upgrading all the same (they change statuses without
keeping the counts), or run `janus-service queues recount` once they are gone.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'queue_counts',
        sa.Column('model', sa.String(length=100), nullable=False),
        sa.Column('lane', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('shard', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('model', 'lane', 'shard'),
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('LOCK TABLE jobs IN SHARE MODE')
    op.execute(
        "INSERT INTO queue_counts (model, lane, shard, n) "
        "SELECT model, lane, 0, count(*) FROM jobs WHERE status = 'queued' GROUP BY model, lane"
    )


def downgrade() -> None:
    op.drop_table('queue_counts')
