"""The history store itself, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from backend.db import repository
from backend.db.engine import create_engine, migrate, session_factory
from backend.db.models import utcnow
from tests.helpers import create_database, drop_database


async def _fresh(database_url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(database_url)
    await migrate(engine)
    return engine


async def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    engine = await _fresh(database_url)
    try:
        await migrate(engine)  # a second start changes nothing
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar()
        assert {"users", "conversations", "messages", "alembic_version"} <= tables
        assert version == "0001"
    finally:
        await engine.dispose()


async def test_replicas_starting_together_migrate_once(postgres_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Several backend processes starting at once on one PostgreSQL: all come up."""
    database = f"replicas_{uuid.uuid4().hex[:8]}"
    admin = postgres_url.rsplit("/", 1)[0]
    await create_database(f"{admin}/postgres", database)
    script = (
        "import asyncio, sys\n"
        "from backend.db.engine import create_engine, migrate\n"
        "async def main():\n"
        "    engine = create_engine(sys.argv[1])\n"
        "    await migrate(engine)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
    )
    try:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                script,
                f"{admin}/{database}",
                stderr=asyncio.subprocess.PIPE,
                cwd=Path(__file__).parent.parent,
            )
            for _ in range(3)
        ]
        results = [await process.communicate() for process in processes]
        assert [p.returncode for p in processes] == [0, 0, 0], [
            err.decode()[-500:] for _, err in results
        ]
    finally:
        await drop_database(f"{admin}/postgres", database)


async def test_messages_keep_their_order_branches_and_fields(database_url: str) -> None:
    engine = await _fresh(database_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            user = await repository.create_user(
                session=session, username=f"u{id(session)}", password_hash="h"
            )
            conversation = await repository.create_conversation(
                session=session, user_id=user.id, title="t"
            )
            now = utcnow()
            question = await repository.add_message(
                session=session,
                conversation=conversation,
                role="user",
                content="q",
                parent_id=None,
                created_at=now,
            )
            first = await repository.add_message(
                session=session,
                conversation=conversation,
                role="assistant",
                content="a1",
                parent_id=question.id,
                created_at=now,  # same instant: seq breaks the tie
                status="interrupted",
                model="m",
                prompt_tokens=3,
                completion_tokens=1,
                timings={"ttft_ms": 1.5},
                sources=[{"id": "c1", "score": 0.5}],
            )
            second = await repository.add_message(
                session=session,
                conversation=conversation,
                role="assistant",
                content="a2",
                parent_id=question.id,
                created_at=now + timedelta(seconds=1),
            )
            await session.commit()

        async with sessions() as session:
            stored = await repository.conversation_messages(
                session=session, conversation_id=conversation.id
            )
            assert [m.id for m in stored] == [question.id, first.id, second.id]
            loaded = stored[1]
            assert (loaded.status, loaded.model, loaded.prompt_tokens) == ("interrupted", "m", 3)
            assert loaded.timings == {"ttft_ms": 1.5}
            assert loaded.sources == [{"id": "c1", "score": 0.5}]
            # Two answers to one question are sibling branches; each path has one answer.
            assert [m.id for m in repository.branch_ending_at(stored, second.id)] == [
                question.id,
                second.id,
            ]
            assert [m.id for m in repository.branch_ending_at(stored, first.id)] == [
                question.id,
                first.id,
            ]
    finally:
        await engine.dispose()


async def test_deleting_a_conversation_deletes_its_messages_only(database_url: str) -> None:
    engine = await _fresh(database_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            user = await repository.create_user(
                session=session, username=f"d{id(session)}", password_hash="h"
            )
            doomed = await repository.create_conversation(
                session=session, user_id=user.id, title="doomed"
            )
            kept = await repository.create_conversation(
                session=session, user_id=user.id, title="kept"
            )
            for conversation in (doomed, kept):
                await repository.add_message(
                    session=session,
                    conversation=conversation,
                    role="user",
                    content="x",
                    parent_id=None,
                )
            await session.commit()
        async with sessions() as session:
            found = await repository.get_conversation(
                session=session, user_id=user.id, conversation_id=doomed.id
            )
            assert found is not None
            await repository.delete_conversation(session=session, conversation=found)
            await session.commit()
        async with sessions() as session:
            assert (
                await repository.conversation_messages(session=session, conversation_id=doomed.id)
                == []
            )
            assert (
                len(
                    await repository.conversation_messages(session=session, conversation_id=kept.id)
                )
                == 1
            )
            other_user = await repository.get_conversation(
                session=session, user_id="someone-else", conversation_id=kept.id
            )
            assert other_user is None
    finally:
        await engine.dispose()


async def test_a_taken_username_is_refused_by_the_database_too(database_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    engine = await _fresh(database_url)
    try:
        async with session_factory(engine)() as session:
            await repository.create_user(session=session, username="twin", password_hash="h")
            await session.commit()
        async with session_factory(engine)() as session:
            with pytest.raises(IntegrityError):
                await repository.create_user(session=session, username="twin", password_hash="h")
    finally:
        await engine.dispose()
