"""Data access for the database. Every function takes keyword-only arguments and a
session; functions that reach a conversation always scope it to its owner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from backend.db.answers import NEW_MESSAGE, message_row
from backend.db.models import (
    ApiKey,
    Bm25Stats,
    Bm25Term,
    Conversation,
    Document,
    Feedback,
    Message,
    MessageStatus,
    User,
    new_id,
    utcnow,
)
from backend.retrieval.bm25 import CorpusDelta, CorpusStats

API_KEY_USE_RESOLUTION = timedelta(minutes=5)  # how precisely `last_used_at` is kept


async def create_user(*, session: AsyncSession, username: str, password_hash: str) -> User:
    user = User(username=username, password_hash=password_hash)
    session.add(user)
    await session.flush()
    return user


async def list_users(*, session: AsyncSession) -> Sequence[User]:
    return (await session.execute(select(User).order_by(User.created_at))).scalars().all()


async def get_user(*, session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_username(*, session: AsyncSession, username: str) -> User | None:
    result = await session.execute(select(User).where(User.username == username))
    return result.scalar_one_or_none()


async def create_conversation(*, session: AsyncSession, user_id: str, title: str) -> Conversation:
    now = utcnow()
    conversation = Conversation(
        id=new_id(), user_id=user_id, title=title, created_at=now, updated_at=now
    )
    session.add(conversation)
    await session.flush()
    return conversation


async def list_conversations(
    *, session: AsyncSession, user_id: str, limit: int, offset: int
) -> tuple[Sequence[Conversation], int]:
    """The user's conversations, most recently active first, and how many there are."""
    count = await session.scalar(
        select(func.count()).select_from(Conversation).where(Conversation.user_id == user_id)
    )
    result = await session.execute(
        select(Conversation)
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.updated_at.desc(), Conversation.id)
        .limit(limit)
        .offset(offset)
    )
    return result.scalars().all(), count or 0


async def get_conversation(
    *, session: AsyncSession, user_id: str, conversation_id: str, with_messages: bool = False
) -> Conversation | None:
    """The conversation if it exists and belongs to `user_id`; None otherwise."""
    query = select(Conversation).where(
        Conversation.id == conversation_id, Conversation.user_id == user_id
    )
    if with_messages:
        query = query.options(selectinload(Conversation.messages))
    result = await session.execute(query)
    return result.scalar_one_or_none()


async def delete_conversation(*, session: AsyncSession, conversation: Conversation) -> None:
    await session.delete(conversation)
    await session.flush()


async def conversation_messages(
    *, session: AsyncSession, conversation_id: str
) -> Sequence[Message]:
    result = await session.execute(
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.created_at, Message.seq)
    )
    return result.scalars().all()


async def add_message(
    *,
    session: AsyncSession,
    conversation: Conversation,
    role: str,
    content: str,
    parent_id: str | None,
    message_id: str | None = None,
    created_at: datetime | None = None,
    status: str = MessageStatus.COMPLETE,
    **fields: Any,
) -> Message:
    """Append a message and mark the conversation as active now: the statement the
    service's own writes run (`db/answers.py`), numbered after the conversation's last."""
    message_id = message_id or new_id()
    row = message_row(
        id=message_id,
        conversation_id=conversation.id,
        role=role,
        content=content,
        parent_id=parent_id,
        status=str(status),
        created_at=created_at or utcnow(),
        **fields,
    )
    await session.execute(NEW_MESSAGE, row)
    conversation.updated_at, conversation.active_message_id = utcnow(), None
    await session.flush()
    message = await session.get(Message, message_id)
    assert message is not None, "its conversation was deleted meanwhile"
    return message


def active_branch(messages: Sequence[Message], chosen_id: str | None) -> list[Message]:
    """The current thread of a conversation's `messages` (oldest first): the branch of the
    message the user chose (`chosen_id`), down to its newest reply at each step; without
    one (or one since deleted), the branch of the newest message."""
    by_id = {m.id: m for m in messages}
    if chosen_id not in by_id:
        return branch_ending_at(messages, messages[-1].id if messages else None)
    newest_reply: dict[str, str] = {}
    for m in messages:  # oldest first: the last one written wins
        if m.parent_id is not None:
            newest_reply[m.parent_id] = m.id
    leaf, seen = str(chosen_id), set()
    while leaf in newest_reply and leaf not in seen:
        seen.add(leaf)
        leaf = newest_reply[leaf]
    return branch_ending_at(messages, leaf)


def branch_ending_at(messages: Sequence[Message], leaf_id: str | None) -> list[Message]:
    """The messages from the first one down to `leaf_id`, following parents (oldest first)."""
    by_id = {m.id: m for m in messages}
    path: list[Message] = []
    current = by_id.get(leaf_id) if leaf_id else None
    while current is not None and current not in path:
        path.append(current)
        current = by_id.get(current.parent_id) if current.parent_id else None
    path.reverse()
    return path


# --- documents and BM25 statistics --------------------------------------------------------


async def get_documents(
    *, session: AsyncSession, namespace: str, ids: Sequence[str]
) -> dict[str, Document]:
    if not ids:
        return {}
    result = await session.execute(
        select(Document).where(Document.namespace == namespace, Document.id.in_(list(ids)))
    )
    return {d.id: d for d in result.scalars()}


async def list_documents(
    *, session: AsyncSession, owner_id: str, limit: int, offset: int
) -> tuple[Sequence[Document], int]:
    count = await session.scalar(
        select(func.count()).select_from(Document).where(Document.owner_id == owner_id)
    )
    result = await session.execute(
        select(Document)
        .where(Document.owner_id == owner_id)
        .order_by(Document.updated_at.desc(), Document.id)
        .limit(limit)
        .offset(offset)
    )
    return result.scalars().all(), count or 0


async def owned_documents(
    *, session: AsyncSession, owner_id: str, document_id: str
) -> list[Document]:
    """The caller's documents with this id (one per namespace it is in)."""
    result = await session.execute(
        select(Document).where(Document.owner_id == owner_id, Document.id == document_id)
    )
    return list(result.scalars())


async def load_corpus_stats(*, session: AsyncSession) -> tuple[CorpusStats, int]:
    """The BM25 corpus statistics and their version."""
    row = await session.get(Bm25Stats, 1)
    if row is None:
        return CorpusStats(), 0
    terms = await session.execute(select(Bm25Term.token_id, Bm25Term.doc_freq))
    doc_freq = {int(tid): int(df) for tid, df in terms}
    return CorpusStats(row.doc_count, row.total_length, doc_freq), row.version


async def corpus_stats_version(*, session: AsyncSession) -> int:
    return int(await session.scalar(select(Bm25Stats.version).where(Bm25Stats.id == 1)) or 0)


async def apply_corpus_delta(*, session: AsyncSession, delta: CorpusDelta, sign: int) -> None:
    """Add or take back chunks' contribution to the stored BM25 statistics (same
    transaction as the documents they belong to)."""
    if not delta.doc_count and not delta.doc_freq:
        return
    row = await session.get(Bm25Stats, 1, with_for_update=True)
    if row is None:
        row = Bm25Stats(id=1, doc_count=0, total_length=0, version=0)
        session.add(row)
    row.doc_count = max(row.doc_count + sign * delta.doc_count, 0)
    row.total_length = max(row.total_length + sign * delta.total_length, 0)
    row.version += 1
    if delta.doc_freq:
        dialect = session.bind.dialect.name if session.bind else "sqlite"
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        items = list(delta.doc_freq.items())
        for start in range(0, len(items), 5000):
            statement = insert(Bm25Term).values(
                [{"token_id": tid, "doc_freq": sign * n} for tid, n in items[start : start + 5000]]
            )
            statement = statement.on_conflict_do_update(
                index_elements=[Bm25Term.token_id],
                set_={"doc_freq": Bm25Term.doc_freq + statement.excluded.doc_freq},
            )
            await session.execute(statement)
        await session.execute(delete(Bm25Term).where(Bm25Term.doc_freq <= 0))
    await session.flush()


# --- API keys ------------------------------------------------------------------------------


async def create_api_key(
    *, session: AsyncSession, user_id: str, name: str, prefix: str, key_hash: str
) -> ApiKey:
    key = ApiKey(user_id=user_id, name=name, prefix=prefix, key_hash=key_hash)
    session.add(key)
    await session.flush()
    return key


async def list_api_keys(*, session: AsyncSession, user_id: str) -> Sequence[ApiKey]:
    result = await session.execute(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
    )
    return result.scalars().all()


async def get_api_key(*, session: AsyncSession, user_id: str, key_id: str) -> ApiKey | None:
    result = await session.execute(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
    )
    return result.scalar_one_or_none()


async def api_key_owner(*, session: AsyncSession, key_hash: str) -> tuple[ApiKey, User] | None:
    """The key and its owner, or None for an unknown key. Reads only."""
    result = await session.execute(
        select(ApiKey, User)
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.key_hash == key_hash)
    )
    row = result.first()
    return None if row is None else (row[0], row[1])


async def note_api_key_use(
    *, session: AsyncSession, key: ApiKey, every: timedelta = API_KEY_USE_RESOLUTION
) -> bool:
    """Record that `key` was used now, unless that was already noted within `every` (so a
    busy key costs one write per interval, not one per request). True if it wrote."""
    now = utcnow()
    if key.last_used_at is not None and now - key.last_used_at < every:
        return False
    await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return True


# --- feedback ------------------------------------------------------------------------------


async def get_owned_message(
    *, session: AsyncSession, user_id: str, message_id: str
) -> Message | None:
    """The message if it is in one of `user_id`'s conversations."""
    result = await session.execute(
        select(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.id == message_id, Conversation.user_id == user_id)
    )
    return result.scalar_one_or_none()


async def request_stop(*, session: AsyncSession, message: Message) -> bool:
    """Ask the replica writing the `streaming` answer `message` to stop it (it reads the
    request at its next save). False if the answer has ended meanwhile."""
    result = await session.execute(
        update(Message)
        .where(Message.id == message.id, Message.status == MessageStatus.STREAMING.value)
        .values(stop_requested=True)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


async def set_feedback(
    *, session: AsyncSession, message: Message, rating: int, comment: str | None
) -> Feedback:
    feedback = await session.get(Feedback, message.id)
    if feedback is None:
        feedback = Feedback(message_id=message.id, rating=rating, comment=comment)
        session.add(feedback)
    else:
        feedback.rating, feedback.comment, feedback.created_at = rating, comment, utcnow()
    await session.flush()
    return feedback


async def conversations_with_feedback(
    *, session: AsyncSession, after: str | None = None, since: datetime | None = None, page: int
) -> Sequence[Conversation]:
    """Up to `page` conversations (by id, after `after`) with something to learn from: a
    rated answer, a revision, or a question answered more than once; their messages (with
    ratings) loaded. `since`: only those with such a thing that recent."""
    answer = select(Message.conversation_id).where(Message.role == "assistant")
    rated = answer.join(Feedback, Feedback.message_id == Message.id)
    if since is not None:
        answer = answer.where(Message.created_at >= since)
        rated = rated.where(Feedback.created_at >= since)
    revised = answer.where(Message.revision_of.is_not(None))
    again = (
        answer.where(Message.parent_id.is_not(None))
        .group_by(Message.conversation_id, Message.parent_id)
        .having(func.count() > 1)
    )
    wanted = select(Conversation).where(
        Conversation.id.in_(rated.union(revised, again).scalar_subquery())
    )
    if after is not None:
        wanted = wanted.where(Conversation.id > after)
    result = await session.execute(
        wanted.order_by(Conversation.id).limit(page).options(selectinload(Conversation.messages))
    )
    return result.scalars().all()


async def usernames(*, session: AsyncSession, user_ids: Sequence[str]) -> dict[str, str]:
    result = await session.execute(
        select(User.id, User.username).where(User.id.in_(list(user_ids)))
    )
    return dict(result.all())
