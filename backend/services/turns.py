"""The chat pipeline's plain data: the options of a request, a turn awaiting its answer,
and the events of an answer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from backend.db.models import Message, User
    from backend.llm import ChatModelHandle

Scope = Literal["private", "shared"]


@dataclass
class ChatEvent:
    """One event of an answer: `meta`, `sources`, `token`, `done` or `error`. The last one
    also carries the answer as stored (`stored`, never sent to clients). `id`, on `token`
    and the last event: how many characters of the answer precede the event's end."""

    event: str
    data: dict[str, Any]
    stored: Message | None = None
    id: int | None = None


@dataclass
class RetrievalOptions:
    enabled: bool = True
    namespaces: list[Scope] | None = None
    filter: dict[str, Any] | None = None
    top_k: int | None = None
    alpha: float | None = None
    group_by: Literal["document", "chunk"] | None = None


OnDisconnect = Literal["stop", "finish"]


@dataclass
class ChatOptions:
    model: str | None = None
    on_disconnect: OnDisconnect | None = None  # None: STREAM_DISCONNECT
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)


@dataclass
class ChatTurn:
    """A question (stored, unless `conversation_id` is None) that awaits its answer."""

    conversation_id: str | None  # None: a turn that stores nothing
    user_message_id: str
    assistant_message_id: str
    question: str
    history: list[tuple[str, str]]  # (role, content), oldest first
    models: list[ChatModelHandle]  # the one chosen first, then the fallbacks
    params: dict[str, Any]  # max_tokens, temperature, top_p, stop
    user: User
    retrieval: RetrievalOptions
    system_prompt: str
    started: float = field(default_factory=time.perf_counter)
