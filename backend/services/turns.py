"""The chat pipeline's plain data: the options of a request, and a turn: a question that
awaits its answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from backend.db.models import User
    from backend.llm import ChatModel
    from backend.llm.base import PromptStyle
    from backend.retrieval.passage import Passage
    from backend.services.answer import Answer
    from backend.services.query import QueryMode

Scope = Literal["private", "shared"]


@dataclass
class RetrievalOptions:
    enabled: bool = True
    namespaces: list[Scope] | None = None
    filter: dict[str, Any] | None = None
    top_k: int | None = None
    alpha: float | None = None
    group_by: Literal["document", "chunk"] | None = None
    query: QueryMode | None = None  # how a follow-up's search query is made (services/query.py)
    rerank: bool | None = None  # None: rerank when RERANKER_MODEL is set


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
    prompt: PromptStyle | None = None  # None: the model's own (the evaluator compares them)


@dataclass
class ChatTurn:
    """A question (stored, unless its answer's `conversation_id` is None) and its answer,
    which owns the ids: the conversation, the question (`parent_id`), its own."""

    question: str
    history: list[tuple[str, str]]  # (role, content), oldest first
    models: list[ChatModel]  # the one chosen first, then the fallbacks
    params: dict[str, Any]  # max_tokens, temperature, top_p, stop
    user: User
    retrieval: RetrievalOptions
    system_prompt: str
    on_disconnect: OnDisconnect
    answer: Answer
    # A revision: the passages of the answer it revises (searched no more), and the chain
    # of (earlier answer, the feedback on it), oldest first; the last is the one revised.
    passages: list[Passage] | None = None
    revisions: list[Revision] = field(default_factory=list)
    prompt: PromptStyle | None = None  # None: each model's own layout
    # A format the answer must follow, placed where the model reads it best (the
    # evaluator's "begin with yes, no or maybe").
    instruction: str = ""


@dataclass
class Revision:
    """An answer of a revision chain, and the user's feedback on it."""

    answer: str
    feedback: str
