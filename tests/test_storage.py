"""Migrations create exactly the tables the code uses, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from msgpush.settings import Settings
from msgpush.storage.db import make_engine, migrate
from msgpush.storage.schema import metadata
from tests.server import create_pg_database, drop_pg_database


def _diff_after_migrating(settings: Settings) -> list[object]:
    async def run() -> list[object]:
        engine = make_engine(settings)
        try:
            await migrate(engine)
            await migrate(engine)  # a second run is a no-op
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_migrations_match_schema(backend: str, tmp_path: Path) -> None:
    if backend == "postgresql":
        url = create_pg_database()
        try:
            assert _diff_after_migrating(Settings(data_dir=tmp_path, database_url=url)) == []
        finally:
            drop_pg_database(url)
    else:
        assert _diff_after_migrating(Settings(data_dir=tmp_path)) == []
