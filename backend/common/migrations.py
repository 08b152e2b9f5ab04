"""Running a folder of Alembic migrations on an async engine: the app's database schema
(backend/db/migrations) and the pgvector store's (backend/retrieval/pg_migrations)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

# Alembic keeps its running context in module globals: one migration at a time per process.
_MIGRATION_LOCK = asyncio.Lock()


def _upgrade(connection: Connection, folder: Path, lock_id: int, attributes: dict) -> None:
    if connection.dialect.name == "postgresql":
        # Several replicas may start at once: one migrates, the others wait for it.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.attributes.update(attributes, connection=connection)
    command.upgrade(config, "head")


async def upgrade(
    engine: AsyncEngine, folder: Path, *, lock_id: int, attributes: dict[str, Any] | None = None
) -> None:
    """Apply every pending migration of `folder` (its env.py reads `connection` and the
    other `attributes` from the Alembic config)."""
    async with _MIGRATION_LOCK, engine.begin() as connection:
        await connection.run_sync(_upgrade, folder, lock_id, attributes or {})
