"""One answer: the one object that owns what an answer is so far (its text, its status, its
head events, its last event), from the moment its question is stored to its end.

The pipeline (`services/pipeline.py`) writes it; its readers (`Relay.follow`) and its
observers (the recorder, the metrics, the token quota) read it, never a copy of it. An
answer read back from its row (`Answer.from_row`) is the same object, so a reader resumed
from the database gets the same events as one that follows the answer live."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backend.common.metrics import Metrics
from backend.db.models import Message, MessageStatus, utcnow
from backend.services.events import Done, Error, LastEvent, Meta, Sources

STOPPED = "The answer was stopped before it ended."


@dataclass(eq=False)
class Answer:
    message_id: str
    user_id: str  # whose it is, and whose tokens it spends
    conversation_id: str | None  # None: an answer that is not stored
    parent_id: str | None  # the question it answers
    model: str | None  # the model answering: the one chosen first, then the one that began
    instance: str | None  # the replica generating it
    own_key: bool = False  # on the user's own model key: outside the token quota
    created_at: datetime = field(default_factory=utcnow)
    started: float = field(default_factory=time.perf_counter)  # the question stored (ttft)
    status: MessageStatus = MessageStatus.STREAMING
    position: int | None = None  # its place in a busy model's line while it waits
    head: list[Meta | Sources] = field(default_factory=list)  # once a model began, or it ended
    sources: list[dict[str, Any]] = field(default_factory=list)
    search_query: str | None = None  # what the sources were searched for (None: no search)
    revision_of: str | None = None  # the answer this one revises (a sibling)
    revision_feedback: str | None = None  # what the user asked to change in it
    parts: list[str] = field(default_factory=list)
    length: int = 0  # characters in `parts`
    finish_reason: str | None = None
    error: str | None = None  # for people
    error_code: str | None = None  # the `error` event's code
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, Any] | None = None
    retrieval_ms: float = 0.0  # the search query made, and searched for
    query_ms: float = 0.0  # of which making the search query (a rewrite's model call)
    first_token_at: float | None = None
    ended_at: float | None = None
    ended: bool = False  # its last event is final: every observer has seen its end
    _watchers: set[asyncio.Event] = field(default_factory=set, repr=False)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    # --- written by the pipeline ---------------------------------------------------------
    def wait_in_line(self, position: int) -> None:
        """It waits for a busy model: `position` 1 is next."""
        self.position = position
        self._changed()

    def begin(self, model: str, sources: list[dict[str, Any]]) -> None:
        """A model started answering, from these passages."""
        self.model, self.sources = model, sources
        self.head = [self.meta(), Sources(sources, self.search_query)]
        self._changed()

    def add(self, text: str) -> bool:
        """A piece of the answer's text; True for the first."""
        first = self.first_token_at is None
        if first:
            self.first_token_at = time.perf_counter()
        self.parts.append(text)
        self.length += len(text)
        self._changed()
        return first

    def fail(self, code: str, message: str) -> None:
        self.status, self.finish_reason = MessageStatus.ERROR, "error"
        self.error_code, self.error = code, message

    def interrupt(self) -> None:
        self.status, self.finish_reason = MessageStatus.INTERRUPTED, "cancelled"

    def conclude(self, *, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Its final fields, as it is stored; its readers see the end once it is `close`d."""
        self.ended_at = time.perf_counter()
        if self.status == MessageStatus.STREAMING:
            self.status = MessageStatus.COMPLETE
        self.finish_reason = self.finish_reason or "stop"
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        ttft = self.first_token_at - self.started if self.first_token_at is not None else None
        self.timings = {
            "retrieval_ms": round(self.retrieval_ms, 2),
            "query_ms": round(self.query_ms, 2),
            "ttft_ms": _ms(ttft) if ttft is not None else None,
            "total_ms": _ms(self.ended_at - self.started),
        }
        if not self.head:  # it ended before any model began: its meta names the last tried
            self.head = [self.meta()]

    def close(self) -> None:
        """Its end is final (stored, counted): readers get its last event."""
        self.ended = True
        self._changed()

    # --- read by its readers ---------------------------------------------------------------
    def watch(self) -> asyncio.Event:
        """An event set at every change of the answer (the reader clears it)."""
        wake = asyncio.Event()
        self._watchers.add(wake)
        return wake

    def unwatch(self, wake: asyncio.Event) -> None:
        self._watchers.discard(wake)

    @property
    def watched(self) -> bool:
        return bool(self._watchers)

    def _changed(self) -> None:
        for wake in self._watchers:
            wake.set()

    def meta(self) -> Meta:
        return Meta(
            conversation_id=self.conversation_id,
            user_message_id=self.parent_id,
            assistant_message_id=self.message_id,
            model=self.model,
            instance=self.instance,
        )

    def last_event(self) -> LastEvent:
        """`done`, or `error` with why (once it has ended)."""
        if self.status == MessageStatus.COMPLETE:
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }
            return Done(self.finish_reason, self.model, usage, self.timings, id=self.length)
        code = self.error_code or (
            "interrupted" if self.status == MessageStatus.INTERRUPTED else "model_error"
        )
        return Error(code, self.error or STOPPED, id=self.length)

    @classmethod
    def from_row(cls, message: Message, *, user_id: str) -> Answer:
        """A stored answer of `user_id`'s as it was last saved."""
        answer = cls(
            message_id=message.id,
            user_id=user_id,
            conversation_id=message.conversation_id,
            parent_id=message.parent_id,
            model=message.model,
            instance=message.instance,
            created_at=message.created_at,
            status=MessageStatus(message.status),
            sources=message.sources or [],
            search_query=message.search_query,
            revision_of=message.revision_of,
            revision_feedback=message.revision_feedback,
            parts=[message.content] if message.content else [],
            length=len(message.content),
            finish_reason=message.finish_reason,
            error=message.error,
            prompt_tokens=message.prompt_tokens,
            completion_tokens=message.completion_tokens,
            timings=message.timings,
            ended=message.status != MessageStatus.STREAMING,
        )
        answer.head = [answer.meta(), Sources(answer.sources, answer.search_query)]
        return answer


class AnswerObserver:
    """Told of an answer's first token and of its end (its readers see the end after every
    observer has)."""

    def began(self, answer: Answer) -> None:
        """The answer's first token is in."""

    async def ended(self, answer: Answer) -> None:
        """The answer has ended (`conclude`d): its final fields are set."""


class AnswerMetrics(AnswerObserver):
    """Each ended answer in the metrics: by status, errors by code, time to first token,
    tokens per second and tokens."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def ended(self, answer: Answer) -> None:
        name = answer.model or ""
        tokens = answer.completion_tokens or 0
        self.metrics.answers.labels(name, answer.status.value).inc()
        if answer.error_code:
            self.metrics.errors.labels(answer.error_code).inc()
        if answer.first_token_at is not None and answer.ended_at is not None:
            self.metrics.ttft.labels(name).observe(answer.first_token_at - answer.started)
            generating = answer.ended_at - answer.first_token_at
            if tokens > 1 and generating > 0:
                self.metrics.tokens_per_second.labels(name).observe(tokens / generating)
        self.metrics.tokens.labels(name).inc(tokens)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
