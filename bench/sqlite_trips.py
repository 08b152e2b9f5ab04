"""What a database call costs the service on SQLite, beside the synchronous driver.

The service reaches SQLite through SQLAlchemy's async engine and aiosqlite, which runs
every call on the connection's own thread. Printed, in CPU µs per call (the whole
process, every thread): a user looked up by id through the async engine as the service
does it (a session of its own), the same through SQLAlchemy's synchronous engine, the new
conversation and question written and committed, and one bare aiosqlite statement beside
the same statement on sqlite3 alone. One at a time, as a single request sees them; under
load the trips overlap (bench.relay_load).

    .venv/bin/python -m bench.sqlite_trips [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.orm import Session

from backend.db import repository
from backend.db.answers import AnswerWrites
from backend.db.engine import create_engine, session_factory
from backend.db.models import Base, User, new_id


def per_call(calls: int, run: Callable[[], object]) -> float:
    started = time.process_time()
    for _ in range(calls):
        run()
    return (time.process_time() - started) / calls * 1e6


async def per_call_async(calls: int, run: Callable[[], Awaitable[object]]) -> float:
    for _ in range(calls // 10):  # warm-up
        await run()
    started = time.process_time()
    for _ in range(calls):
        await run()
    return (time.process_time() - started) / calls * 1e6


async def through_the_engine(path: Path, calls: int) -> tuple[str, dict[str, float]]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = session_factory(engine)
    async with sessions() as session:
        user = await repository.create_user(session=session, username="u", password_hash="x")
        await session.commit()

    async def get_user() -> None:
        async with sessions() as session:
            await repository.get_user(session=session, user_id=user.id)

    writes = AnswerWrites(engine)

    async def write_question() -> None:
        await writes.question(
            user_id=user.id,
            conversation_id=new_id(),
            message_id=new_id(),
            parent_id=None,
            text="hello",
            title="t",
        )

    figures = {
        "get_user": await per_call_async(calls, get_user),
        "question": await per_call_async(calls, write_question),
    }
    await engine.dispose()
    return user.id, figures


async def bare_aiosqlite(path: Path, calls: int) -> float:
    async with aiosqlite.connect(path) as connection:

        async def select() -> None:
            cursor = await connection.execute("SELECT id FROM users WHERE id = ?", ("x",))
            await cursor.fetchall()
            await cursor.close()

        return await per_call_async(calls, select)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "history.db"
        user_id, engine_figures = asyncio.run(through_the_engine(path, calls))
        sync_engine = create_sync_engine(f"sqlite:///{path}")

        def sync_get_user() -> None:
            with Session(sync_engine) as session:
                session.get(User, user_id)

        per_call(calls // 10, sync_get_user)
        sync_figure = per_call(calls, sync_get_user)
        aio_figure = asyncio.run(bare_aiosqlite(path, calls))
        raw = sqlite3.connect(path)
        raw_figure = per_call(
            calls, lambda: raw.execute("SELECT id FROM users WHERE id = ?", ("x",)).fetchall()
        )
    print(f"CPU µs per call, {calls} calls each, one at a time")
    print(f"user by id, async engine (as the service): {engine_figures['get_user']:7.0f}")
    print(f"user by id, synchronous engine:            {sync_figure:7.0f}")
    print(f"new conversation + question, async engine: {engine_figures['question']:7.0f}")
    print(f"one SELECT, aiosqlite (3 trips):           {aio_figure:7.0f}")
    print(f"one SELECT, sqlite3 alone:                 {raw_figure:7.0f}")


if __name__ == "__main__":
    main()
