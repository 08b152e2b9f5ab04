"""Data access for the history store. Every function takes keyword-only arguments and a
session; functions that reach a conversation always scope it to its owner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from backend.db.models import Conversation, Message, User, utcnow


async def create_user(*, session: AsyncSession, username: str, password_hash: str) -> User:
    user = User(username=username, password_hash=password_hash)
    session.add(user)
    await session.flush()
    return user


async def get_user(*, session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_username(*, session: AsyncSession, username: str) -> User | None:
    result = await session.execute(select(User).where(User.username == username))
    return result.scalar_one_or_none()


async def create_conversation(*, session: AsyncSession, user_id: str, title: str) -> Conversation:
    conversation = Conversation(user_id=user_id, title=title)
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
    **fields: Any,
) -> Message:
    """Append a message and mark the conversation as active now."""
    seq = await session.scalar(
        select(func.coalesce(func.max(Message.seq), 0)).where(
            Message.conversation_id == conversation.id
        )
    )
    message = Message(
        conversation_id=conversation.id,
        role=role,
        content=content,
        parent_id=parent_id,
        seq=(seq or 0) + 1,
        created_at=created_at or utcnow(),
        **({"id": message_id} if message_id else {}),
        **fields,
    )
    session.add(message)
    conversation.updated_at = utcnow()
    await session.flush()
    return message


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
