"""Alembic environment of the pgvector store: run by PostgresVectorStore.open() on the
connection it hands over, with the embedding `dimension` in the config's attributes. Its
own version table, so the store may share the app's database or have its own."""

from __future__ import annotations

from alembic import context

VERSION_TABLE = "vector_store_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
