"""The database itself, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.db import repository
from backend.db.answers import AnswerWrites
from backend.db.engine import MIGRATIONS_DIR, create_engine, migrate, session_factory
from backend.db.models import Conversation, Message, User, utcnow
from backend.services.answer import Answer
from backend.services.recorder import AnswerRecorder
from tests.helpers import create_database, drop_database


async def _fresh(database_url: str) -> AsyncEngine:
    engine = create_engine(database_url)
    await migrate(engine)
    return engine


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a migrated database (SQLite and PostgreSQL)."""
    engine = await _fresh(database_url)
    yield session_factory(engine)
    await engine.dispose()


async def _user_with_conversations(
    session: AsyncSession, *titles: str
) -> tuple[User, list[Conversation]]:
    user = await repository.create_user(
        session=session, username=f"u-{uuid.uuid4().hex[:8]}", password_hash="h"
    )
    conversations = [
        await repository.create_conversation(session=session, user_id=user.id, title=title)
        for title in titles
    ]
    return user, conversations


async def _questions(session: AsyncSession, conversations: list[Conversation]) -> list[Message]:
    """A first question in each conversation, committed."""
    questions = [
        await repository.add_message(
            session=session,
            conversation=conversation,
            role="user",
            content="Why?",
            parent_id=None,
            status="complete",
        )
        for conversation in conversations
    ]
    await session.commit()
    return questions


def _recorder(sessions: async_sessionmaker[AsyncSession]) -> AnswerRecorder:
    return AnswerRecorder(AnswerWrites(sessions.kw["bind"]), save_seconds=0.5, stale_seconds=10)


def _answer(user: User, question: Message, text: str, **fields: Any) -> Answer:
    """An answer to `question` that has begun with `text`."""
    answer = Answer(
        str(uuid.uuid4()),
        user.id,
        question.conversation_id,
        question.id,
        model="fake-model",
        instance="here",
        **fields,
    )
    answer.add(text)
    return answer


async def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    engine = await _fresh(database_url)
    try:
        await migrate(engine)  # a second start changes nothing
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar()
        assert {"users", "conversations", "messages", "documents", "bm25_terms"} <= tables
        head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        assert version == head
    finally:
        await engine.dispose()


async def test_replicas_starting_together_migrate_once(postgres_url: str, tmp_path) -> None:
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
                cwd=Path(__file__).parents[2],
            )
            for _ in range(3)
        ]
        results = [await process.communicate() for process in processes]
        assert [p.returncode for p in processes] == [0, 0, 0], [
            err.decode()[-500:] for _, err in results
        ]
    finally:
        await drop_database(f"{admin}/postgres", database)


async def test_messages_keep_their_order_branches_and_fields(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        _, [conversation] = await _user_with_conversations(session, "t")
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
            created_at=now,  # the same instant: seq breaks the tie
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
    # Two answers to one question are sibling branches; each path holds one of them.
    path = repository.branch_ending_at
    assert [m.id for m in path(stored, second.id)] == [question.id, second.id]
    assert [m.id for m in path(stored, first.id)] == [question.id, first.id]


async def test_deleting_a_conversation_deletes_its_messages_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        user, [doomed, kept] = await _user_with_conversations(session, "doomed", "kept")
        for conversation in (doomed, kept):
            await repository.add_message(
                session=session, conversation=conversation, role="user", content="x", parent_id=None
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
        messages = repository.conversation_messages
        assert await messages(session=session, conversation_id=doomed.id) == []
        assert len(await messages(session=session, conversation_id=kept.id)) == 1
        assert (
            await repository.get_conversation(
                session=session, user_id="someone-else", conversation_id=kept.id
            )
            is None
        )


async def test_a_taken_username_is_refused_by_the_database_too(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    name = f"twin-{uuid.uuid4().hex[:8]}"
    async with sessions() as session:
        await repository.create_user(session=session, username=name, password_hash="h")
        await session.commit()
    async with sessions() as session:
        with pytest.raises(IntegrityError):
            await repository.create_user(session=session, username=name, password_hash="h")


async def test_streaming_rows_follow_their_question_and_skip_deleted_conversations(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The recorder's streaming save: each answer's row is numbered after its question and
    carries its model and sources; an answer whose conversation was deleted meanwhile is
    dropped without failing the others' save."""
    async with sessions() as session:
        user, (kept, doomed) = await _user_with_conversations(session, "kept", "doomed")
        questions = {q.conversation_id: q for q in await _questions(session, [kept, doomed])}
        await repository.delete_conversation(session=session, conversation=doomed)
        await session.commit()

    recorder = _recorder(sessions)
    answers = [
        _answer(user, questions[conversation.id], "Because", sources=[{"id": "d#0", "text": "t"}])
        for conversation in (doomed, kept)
    ]
    for answer in answers:
        recorder.began(answer)
    await recorder.save()

    assert set(recorder.saved) == {answers[1].message_id}
    async with sessions() as session:
        stored = await repository.conversation_messages(session=session, conversation_id=kept.id)
        assert [(m.role, m.seq, m.status) for m in stored] == [
            ("user", 1, "complete"),
            ("assistant", 2, "streaming"),
        ]
        assert stored[1].content == "Because"
        assert stored[1].model == "fake-model"
        assert stored[1].sources == [{"id": "d#0", "text": "t"}]
        assert stored[1].instance == "here"
        assert stored[1].parent_id == stored[0].id
        gone = await repository.conversation_messages(session=session, conversation_id=doomed.id)
        assert gone == []


async def test_a_save_writes_the_text_of_every_answer_that_grew(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Each save writes the text of every answer that grew since the last one (one
    statement for all) and leaves alone a row that is no longer `streaming`."""
    from sqlalchemy import update

    async with sessions() as session:
        user, conversations = await _user_with_conversations(session, "a", "b", "c")
        questions = await _questions(session, conversations)
    recorder = _recorder(sessions)
    answers = [_answer(user, question, "One") for question in questions]
    for answer in answers:
        recorder.began(answer)
    await recorder.save()
    async with sessions() as session:  # the third was ended elsewhere meanwhile
        await session.execute(
            update(Message).where(Message.id == answers[2].message_id).values(status="interrupted")
        )
        await session.commit()
    answers[0].add(" two")
    answers[2].add(" lost")
    await recorder.save()
    answers[0].add(" three")
    answers[1].add(" and two")
    await recorder.save()

    async with sessions() as session:
        stored = [await session.get(Message, answer.message_id) for answer in answers]
    assert [(m.content, m.status) for m in stored if m is not None] == [
        ("One two three", "streaming"),
        ("One and two", "streaming"),
        ("One", "interrupted"),
    ]


async def test_questions_arriving_together_are_written_in_one_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The hot path's writer: questions that arrive together are committed together, each
    numbered after the last in its conversation; one that fails fails alone."""
    from sqlalchemy import event

    from backend.db.models import new_id

    async with sessions() as session:
        user, (existing,) = await _user_with_conversations(session, "existing")
        await session.commit()
    writes = AnswerWrites(sessions.kw["bind"])
    commits: list[object] = []
    event.listen(writes.engine.sync_engine, "commit", commits.append)

    def ask(conversation_id: str, *, user_id: str = user.id, title: str | None = None):
        return writes.question(
            user_id=user_id,
            conversation_id=conversation_id,
            message_id=new_id(),
            parent_id=None,
            text=f"question to {conversation_id}",
            title=title,
        )

    new = [new_id() for _ in range(20)]
    await asyncio.gather(*(ask(c, title="new") for c in new), *(ask(existing.id) for _ in range(5)))
    assert len(commits) == 1
    async with sessions() as session:
        for conversation_id in new:
            stored = await repository.conversation_messages(
                session=session, conversation_id=conversation_id
            )
            assert [(m.role, m.seq) for m in stored] == [("user", 1)]
        stored = await repository.conversation_messages(
            session=session, conversation_id=existing.id
        )
        assert sorted(m.seq for m in stored) == [1, 2, 3, 4, 5]

    # A new conversation of a user that does not exist breaks its foreign key.
    good, bad = [new_id() for _ in range(3)], new_id()
    results = await asyncio.gather(
        *(ask(c, title="new") for c in good),
        ask(bad, user_id="nobody", title="new"),
        return_exceptions=True,
    )
    assert [type(r) for r in results[:3]] == [type(None)] * 3
    assert isinstance(results[3], IntegrityError)
    async with sessions() as session:
        assert await session.get(Conversation, bad) is None
        for conversation_id in good:
            assert await session.get(Conversation, conversation_id) is not None


async def test_users_looked_up_together_are_read_in_one_query(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Authentication's loader: lookups that arrive together are one query; an unknown id
    is None; nothing is kept, so a user deactivated meanwhile is seen at once."""
    from sqlalchemy import event, update

    from backend.db.batch import BatchLoader

    async with sessions() as session:
        users = [
            await repository.create_user(session=session, username=f"u{i}", password_hash="h")
            for i in range(30)
        ]
        await session.commit()
    loader = BatchLoader(sessions, User)
    queries: list[str] = []
    engine = sessions.kw["bind"]
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: queries.append(statement),
    )
    ids = [u.id for u in users] * 2 + ["nobody"]
    found = await asyncio.gather(*(loader.get(id_) for id_ in ids))
    assert [u.username if u else None for u in found] == [u.username for u in users] * 2 + [None]
    assert len([q for q in queries if "FROM users" in q]) == 1

    async with sessions() as session:
        await session.execute(update(User).where(User.id == users[0].id).values(is_active=False))
        await session.commit()
    again = await loader.get(users[0].id)
    assert again is not None
    assert not again.is_active
