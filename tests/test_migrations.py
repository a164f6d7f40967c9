"""The migrations and the models agree, on Postgres and on the embedded SQLite."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.core.settings import Settings
from service.core.tables import Base
from service.entry.migrate import upgrade


def _diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return diff


def test_postgres_schema_matches_models(pg_url: str) -> None:
    # pg_url is already migrated to head by the session fixture.
    assert _diff(Settings(database_url=pg_url).database_url) == []


def test_sqlite_migrates_and_matches(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    upgrade(url)
    upgrade(url)  # idempotent
    assert {"jobs", "api_keys", "batches", "webhook_events", "webhook_deliveries",
            "workers"} <= set(inspect(create_engine(url)).get_table_names())
    assert _diff(url) == []
