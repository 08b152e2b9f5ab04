"""Storing and observing answers: what one answer has produced so far (`Answer`), and the
`AnswerRecorder` that writes it to the database and counts it in the metrics.

Questions and ended answers are written through a group-commit writer (`db/batch.py`):
the rows of requests that arrive together in one transaction. Answers are durable while
they stream: the row appears at the first token (status `streaming`; within
STREAM_SAVE_SECONDS while answers keep beginning), and one background task
(`AnswerRecorder.run`) saves every growing answer of this process in one transaction every
STREAM_SAVE_SECONDS, with a heartbeat (`updated_at`).
Rows whose writer stopped heart-beating (a crashed replica) are marked `interrupted`, their
text kept, by every replica's start and periodic sweep. The heartbeat also reads back which
answers another replica was asked to stop (`stop_requested`): those go to `on_stop`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import anyio
from sqlalchemy import Insert, Table, bindparam, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable

from backend.common.metrics import Metrics
from backend.db.batch import BatchWriter
from backend.db.models import Conversation, Message, utcnow
from backend.llm import ChatModelHandle
from backend.llm.wire import Delta
from backend.services.limits import Limits

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """What has been produced of one answer so far (filled in by `ChatService.answer`)."""

    conversation_id: str | None  # None: an answer that is not stored
    message_id: str
    user_id: str  # whose tokens it spends
    parent_id: str
    created_at: datetime
    started: float  # perf_counter when the question was stored
    model: ChatModelHandle
    parts: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None  # as the model reported it
    counted_prompt_tokens: int = 0  # as the prompt builder counted it
    finish_reason: str | None = None
    first_token_at: float | None = None
    retrieval_ms: float = 0.0
    status: str = "complete"
    error: str | None = None
    error_code: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def take(self, delta: Delta) -> str:
        """Note a model delta (usage, finish reason, text); returns its text."""
        if delta.usage is not None:
            self.usage = delta.usage
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        text = delta.text
        if text:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.parts.append(text)
        return text

    def fail(self, code: str, message: str) -> None:
        self.status, self.finish_reason = "error", "error"
        self.error_code, self.error = code, message

    def interrupt(self) -> None:
        self.status, self.finish_reason = "interrupted", "cancelled"

    def final_usage(self) -> dict[str, int]:
        """The model's own counts, else the prompt builder's and the tokenizer's."""
        if self.usage:
            return self.usage
        text = self.text
        return {
            "prompt_tokens": self.counted_prompt_tokens,
            "completion_tokens": self.model.count_tokens(text) if text else 0,
        }

    def timings(self) -> dict[str, float | None]:
        return {
            "retrieval_ms": round(self.retrieval_ms, 2),
            "ttft_ms": _ms(self.first_token_at - self.started) if self.first_token_at else None,
            "total_ms": _ms(time.perf_counter() - self.started),
        }


class AnswerRecorder:
    """Writes answers to the database, while they stream and when they end, and observes
    them in the metrics."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        instance: str = "",
        save_seconds: float = 0.5,
        stale_seconds: float = 10.0,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        self.sessions = sessions
        # Saves go through a plain connection with Core statements: no ORM session, no
        # unit of work, for a transaction that runs twice a second (docs/models.md).
        self.engine: AsyncEngine = sessions.kw["bind"]
        # Questions and ended answers: many requests' rows in one transaction.
        self.writer = BatchWriter(self.engine, _WRITES)
        self.metrics = metrics or Metrics()
        self.limits = limits
        self.instance = instance
        self.save_seconds = save_seconds
        self.stale_seconds = stale_seconds
        self.streaming: dict[str, Answer] = {}  # message id -> answer being saved
        self.saved: dict[str, int] = {}  # message id -> characters in its row
        self.on_stop = on_stop  # called with an answer's id when asked to stop it
        self.lock = asyncio.Lock()  # one writer of streaming rows at a time
        self.wake = asyncio.Event()

    # --- while streaming -------------------------------------------------------------------
    def first_token(self, answer: Answer) -> None:
        """The answer has begun: its row is written at the next save, which starts now."""
        if answer.conversation_id is not None and self.save_seconds > 0:
            self.streaming[answer.message_id] = answer
            self.wake.set()

    async def run(self) -> None:
        """Save growing answers every `save_seconds` and sweep dead ones, until cancelled.
        An answer that begins after a quiet spell is saved at once; while answers keep
        beginning, saves still come at most once every `save_seconds`: back to back, they
        would hold the writer's lock from the questions arriving meanwhile."""
        await self.sweep()
        period = self.save_seconds or self.stale_seconds / 2
        next_sweep = time.monotonic() + self.stale_seconds / 2
        while True:
            if not self.streaming:  # nothing to save until an answer begins
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), period)
            self.wake.clear()
            began = time.monotonic()
            try:
                await self.save()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.stale_seconds / 2
                    await self.sweep()
            except Exception:  # the database is away: try again at the next turn
                log.warning("saving streaming answers failed", exc_info=True)
            if self.streaming:  # the next save one period after this one began
                await asyncio.sleep(max(0.0, began + period - time.monotonic()))

    async def save(self) -> None:
        """One transaction: new rows for answers that began, the text of those that grew
        (one statement for all), a heartbeat for all (one more)."""
        if not self.streaming:
            return
        async with self.lock, self.writer.lock, self.engine.connect() as connection:
            now = utcnow()
            begun: dict[str, Answer] = {}  # answers that get their row now
            rows: list[dict[str, Any]] = []  # their rows
            grown: list[dict[str, str]] = []  # answers whose text grew since the last save
            for answer in list(self.streaming.values()):
                text = answer.text
                if answer.message_id not in self.saved:
                    begun[answer.message_id] = answer
                    rows.append(
                        _answer_row(
                            answer,
                            content=text,
                            status="streaming",
                            model=answer.model.name,
                            sources=answer.sources,
                            instance=self.instance,
                            updated_at=now,
                        )
                    )
                elif len(text) != self.saved[answer.message_id]:
                    grown.append({"answer_id": answer.message_id, "text": text})
                self.saved[answer.message_id] = len(text)
            # Each statement runs once for all its rows (executemany): one trip, not one each.
            if rows:
                await connection.execute(_NEW_MESSAGE, rows)
            if grown:
                await connection.execute(_GROWN, grown)
            beat = await connection.execute(
                update(_MESSAGES)
                .where(_MESSAGES.c.id.in_(list(self.saved)), _MESSAGES.c.status == "streaming")
                .values(updated_at=now)
                .returning(_MESSAGES.c.id, _MESSAGES.c.stop_requested)
            )
            alive: dict[str, bool] = {row[0]: row[1] for row in beat}  # id -> stop requested
            active: set[str] = set()  # conversations that got a new answer
            for message_id, answer in begun.items():
                if message_id in alive:
                    active.add(str(answer.conversation_id))
                else:  # its conversation was deleted meanwhile
                    log.info("conversation %s was deleted mid-answer", answer.conversation_id)
                    self.streaming.pop(message_id, None)
                    self.saved.pop(message_id, None)
            if active:
                await connection.execute(_ACTIVE, [_activity(c, now) for c in active])
            await connection.commit()
        if self.on_stop is not None:
            for message_id, stop in alive.items():
                if stop:  # stopped through another replica (idempotent)
                    self.on_stop(message_id)

    async def sweep(self) -> int:
        """Mark `interrupted` the answers whose writer stopped heart-beating; their text
        stays. Returns how many. This recorder's own answers are alive whatever their
        heartbeat says (a database slow to take writes delays it)."""
        cutoff = utcnow() - timedelta(seconds=self.stale_seconds)
        alive = list(self.saved.keys() | self.streaming.keys())
        async with self.writer.lock, self.sessions() as session:
            result = await session.execute(
                update(Message)
                .where(
                    Message.status == "streaming",
                    Message.updated_at < cutoff,
                    Message.id.not_in(alive),
                )
                .values(status="interrupted", finish_reason="cancelled", updated_at=utcnow())
            )
            await session.commit()
        swept = int(getattr(result, "rowcount", 0) or 0)
        if swept:
            log.warning("marked %d answers interrupted: their writer stopped", swept)
        return swept

    # --- at the end ----------------------------------------------------------------------
    async def finish(self, answer: Answer) -> Message:
        """Store the ended answer (when it is stored at all) and count it; returns the row
        (unsaved when the answer is not stored)."""
        usage = answer.final_usage()
        fields: dict[str, Any] = {
            "status": answer.status,
            "model": answer.model.name,
            "finish_reason": answer.finish_reason or "stop",
            "error": answer.error,
            "timings": answer.timings(),
            "sources": answer.sources,
            **usage,
        }
        self.observe(answer, usage["completion_tokens"] or 0)
        if self.limits is not None:  # the day's quota, whether or not the answer is stored
            spent = (usage["prompt_tokens"] or 0) + (usage["completion_tokens"] or 0)
            await self.limits.spend_tokens(answer.user_id, spent)
        content, now = answer.text, utcnow()
        message = Message(
            id=answer.message_id,
            conversation_id=answer.conversation_id,
            role="assistant",
            content=content,
            parent_id=answer.parent_id,
            created_at=answer.created_at,
            updated_at=now,
            instance=self.instance,
            **fields,
        )
        if answer.conversation_id is None:
            return message
        async with self.lock:  # a save under way may be writing its streaming row
            self.streaming.pop(answer.message_id, None)
            row_written = self.saved.pop(answer.message_id, None) is not None
        values = {"content": content, "updated_at": now, **fields}
        if row_written:
            ended = {"answer_id": answer.message_id, **{f"new_{k}": v for k, v in values.items()}}
            await self.writer.write({_ENDED: [ended]})
        else:
            await self.writer.write(
                {
                    _NEW_MESSAGE: [_answer_row(answer, instance=self.instance, **values)],
                    _ACTIVE: [_activity(answer.conversation_id, now)],
                }
            )
        return message

    async def question(
        self,
        *,
        user_id: str,
        conversation_id: str,
        message_id: str,
        parent_id: str | None,
        text: str,
        title: str | None = None,
    ) -> None:
        """Store a question, and with a `title` the new conversation it opens. A question
        to a conversation deleted meanwhile is not stored (nor, then, its answer)."""
        now = utcnow()
        rows: dict[Executable, list[dict[str, Any]]] = {
            _NEW_MESSAGE: [
                _message_row(
                    id=message_id,
                    conversation_id=conversation_id,
                    parent_id=parent_id,
                    role="user",
                    content=text,
                    status="complete",
                    created_at=now,
                )
            ]
        }
        if title is None:
            rows[_ACTIVE] = [_activity(conversation_id, now)]
        else:
            conversation = {"id": conversation_id, "user_id": user_id, "title": title}
            rows[_NEW_CONVERSATION] = [{**conversation, "created_at": now, "updated_at": now}]
        await self.writer.write(rows)

    async def interrupted(self, answer: Answer) -> Message:
        """The reader went away: keep what was said so far (shielded from the cancel)."""
        answer.interrupt()
        with anyio.CancelScope(shield=True):
            stored = await self.finish(answer)
        return stored

    def observe(self, answer: Answer, tokens: int) -> None:
        name = answer.model.name
        self.metrics.answers.labels(name, answer.status).inc()
        if answer.error_code:
            self.metrics.errors.labels(answer.error_code).inc()
        if answer.first_token_at is not None:
            self.metrics.ttft.labels(name).observe(answer.first_token_at - answer.started)
            generating = time.perf_counter() - answer.first_token_at
            if tokens > 1 and generating > 0:
                self.metrics.tokens_per_second.labels(name).observe(tokens / generating)
        self.metrics.tokens.labels(name).inc(tokens)


_MESSAGES = cast(Table, Message.__table__)
_CONVERSATIONS = cast(Table, Conversation.__table__)
_MESSAGE_COLUMNS = ("id", "conversation_id", "parent_id", "role", "content", "status", "model",
                    "finish_reason", "error", "prompt_tokens", "completion_tokens", "timings",
                    "sources", "instance", "created_at", "updated_at")  # fmt: skip
_ENDED_COLUMNS = ("content", "updated_at", "status", "model", "finish_reason", "error",
                  "prompt_tokens", "completion_tokens", "timings", "sources")  # fmt: skip


def _message_row(**values: Any) -> dict[str, Any]:
    """The parameters of `_NEW_MESSAGE`: `values` by column, the other columns NULL."""
    if unknown := values.keys() - set(_MESSAGE_COLUMNS):
        raise ValueError(f"not columns of a new message: {sorted(unknown)}")
    return {f"new_{c}": values.get(c) for c in _MESSAGE_COLUMNS}


def _answer_row(answer: Answer, **values: Any) -> dict[str, Any]:
    return _message_row(id=answer.message_id, conversation_id=answer.conversation_id,
                        parent_id=answer.parent_id, role="assistant",
                        created_at=answer.created_at, **values)  # fmt: skip


def _new_message_statement() -> Insert:
    """A new message (parameters `new_<column>`), numbered after its conversation's last
    one, and only if the conversation still exists (it may have been deleted meanwhile)."""
    columns = _MESSAGES.c
    conversation_id = bindparam("new_conversation_id", type_=columns.conversation_id.type)
    next_seq = (
        select(func.coalesce(func.max(columns.seq), 0) + 1)
        .where(columns.conversation_id == conversation_id)
        .scalar_subquery()
    )
    row = select(
        *(bindparam(f"new_{name}", type_=columns[name].type) for name in _MESSAGE_COLUMNS),
        next_seq,
    ).where(exists().where(Conversation.id == conversation_id))
    return insert(_MESSAGES).from_select([*_MESSAGE_COLUMNS, "seq"], row)


# Core statements on the tables, so that a list of parameters is one executemany (the ORM
# would take such a list as a bulk operation by primary key).
_NEW_CONVERSATION = insert(_CONVERSATIONS)
_NEW_MESSAGE = _new_message_statement()
# The text of a streaming answer that grew (its heartbeat, `updated_at`, is written with all
# the others').
_GROWN = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("answer_id"), _MESSAGES.c.status == "streaming")
    .values(content=bindparam("text"))
)
# An ended answer whose row was written while it streamed.
_ENDED = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("answer_id"))
    .values(
        {name: bindparam(f"new_{name}", type_=_MESSAGES.c[name].type) for name in _ENDED_COLUMNS}
    )
)
# A conversation that got a new message is active now.
_ACTIVE = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("conversation_id"))
    .values(updated_at=bindparam("new_updated_at", type_=_CONVERSATIONS.c.updated_at.type))
)


def _activity(conversation_id: str, now: datetime) -> dict[str, Any]:
    """The parameters of `_ACTIVE`."""
    return {"conversation_id": conversation_id, "new_updated_at": now}


_WRITES = (_NEW_CONVERSATION, _NEW_MESSAGE, _ENDED, _ACTIVE)  # the writer's, in this order


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
