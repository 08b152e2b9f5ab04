"""The database's tables (users, conversations, messages). Schema changes go through
Alembic migrations in `backend/db/migrations`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class MessageStatus(StrEnum):
    """A message's `status`. A question is `complete` from the start; an answer is
    `streaming` while it is generated, then `complete`, `error` (the model failed: its text
    so far is kept) or `interrupted` (stopped, or its writer died)."""

    STREAMING = "streaming"
    COMPLETE = "complete"
    ERROR = "error"
    INTERRUPTED = "interrupted"


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, time zone attached, whatever the database (SQLite drops it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True)
    # Past the per-user limits; only the command line grants it (backend.cli users add).
    is_admin: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # The message whose branch the user chose to continue; None: the newest message's. A
    # new message clears it (db/answers.py), so the thread goes on from where it was added.
    active_message_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(Message.created_at, Message.seq)",
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index(
            "ix_messages_streaming",
            "updated_at",
            postgresql_where=text("status = 'streaming'"),
            sqlite_where=text("status = 'streaming'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    # The message this one answers or follows; regenerated answers are siblings.
    parent_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    # Tie-breaker for messages created within the same clock tick.
    seq: Mapped[int] = mapped_column(Integer, default=0)
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.COMPLETE.value)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # What the answer's sources were searched for: the question, or for a follow-up its
    # standalone query (services/query.py).
    search_query: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A revision (POST /messages/{id}/revise): the answer it revises, a sibling, and the
    # user's feedback it was written from.
    revision_of: Mapped[str | None] = mapped_column(String(36), nullable=True)
    revision_feedback: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # While an answer streams (status `streaming`): the replica writing it and its last
    # save, the heartbeat that the sweep reads (db/answers.py), and whether a
    # replica other than the writer was asked to stop it (the writer reads it as it saves).
    instance: Mapped[str | None] = mapped_column(String(200), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stop_requested: Mapped[bool] = mapped_column(default=False, server_default=false())

    conversation: Mapped[Conversation] = relationship(back_populates="messages")
    feedback: Mapped[Feedback | None] = relationship(
        back_populates="message",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class Document(Base):
    """A document ingested into a namespace; its chunks live in the vector store under ids
    `{id}#{revision}#{n}` for n < chunk_count."""

    __tablename__ = "documents"

    namespace: Mapped[str] = mapped_column(String(100), primary_key=True)
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str | None] = mapped_column(String(500), nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    revision: Mapped[str] = mapped_column(String(16))
    doc_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    chunk_count: Mapped[int] = mapped_column(Integer)
    char_count: Mapped[int] = mapped_column(Integer)
    # What this document adds to the BM25 corpus statistics, to take back on delete.
    bm25: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Bm25Stats(Base):
    """Corpus-wide BM25 statistics (one row); `version` moves on every change so replicas
    know to reload."""

    __tablename__ = "bm25_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc_count: Mapped[int] = mapped_column(Integer, default=0)
    total_length: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)


class Bm25Term(Base):
    __tablename__ = "bm25_terms"

    token_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    doc_freq: Mapped[int] = mapped_column(Integer)


class ApiKey(Base):
    """A user's API key; only its SHA-256 is kept (keys are long and random)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Feedback(Base):
    """The conversation owner's rating of an answer (one per message; sent again, replaced)."""

    __tablename__ = "feedback"

    message_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    rating: Mapped[int] = mapped_column(Integer)  # 1 or -1
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    message: Mapped[Message] = relationship(back_populates="feedback")


class Identity(Base):
    """An OpenID Connect identity, (issuer, subject), signed in as one account; never
    matched by username or email. `ticket_hash`: the one-time ticket its last sign-in
    handed back (POST /auth/oidc/ticket trades it for a token, once, within a minute)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_identities_issuer_subject"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ticket_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    ticket_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_sign_in_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelKey(Base):
    """A user's own model key (one per user), encrypted (services/model_keys.py): a
    Hugging Face token or an OpenAI-compatible key with its base URL and model. `source`
    `sign-in`: the Hugging Face token of the user's sign-in (scope inference-api), with its
    refresh token and expiry."""

    __tablename__ = "model_keys"

    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    provider: Mapped[str] = mapped_column(String(32))  # huggingface | openai-compatible
    encrypted_key: Mapped[str] = mapped_column(Text)
    hint: Mapped[str] = mapped_column(String(32))  # the masked key, shown after saving
    base_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="user")  # user | sign-in
    encrypted_refresh: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
