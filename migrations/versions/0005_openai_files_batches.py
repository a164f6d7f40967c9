"""openai_files and openai_batches: the OpenAI-compatible face's files and batch records

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from alembic import op

import service.core.tables

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def _time(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, service.core.tables.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        'openai_files',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('api_key_id', sa.String(length=40), nullable=False),
        sa.Column('purpose', sa.String(length=32), nullable=False),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('key', sa.Text(), nullable=False),
        _time('created_at', nullable=False),
        sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_openai_files_key_id', 'openai_files', ['api_key_id', 'id'], unique=False)
    op.create_table(
        'openai_batches',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('api_key_id', sa.String(length=40), nullable=False),
        sa.Column('batch_id', sa.String(length=40), nullable=True),
        sa.Column('endpoint', sa.String(length=64), nullable=False),
        sa.Column('input_file_id', sa.String(length=40), nullable=False),
        sa.Column('completion_window', sa.String(length=16), nullable=False),
        sa.Column('metadata', _JSON, nullable=False),
        sa.Column('errors', _JSON, nullable=True),
        sa.Column('output_file_id', sa.String(length=40), nullable=True),
        sa.Column('error_file_id', sa.String(length=40), nullable=True),
        _time('created_at', nullable=False),
        _time('expires_at', nullable=False),
        _time('failed_at'),
        _time('cancelling_at'),
        _time('expired_at'),
        _time('finalized_at'),
        sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id']),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_openai_batches_key_id', 'openai_batches', ['api_key_id', 'id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_openai_batches_key_id', table_name='openai_batches')
    op.drop_table('openai_batches')
    op.drop_index('ix_openai_files_key_id', table_name='openai_files')
    op.drop_table('openai_files')
