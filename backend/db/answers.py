"""The hot path's statements on messages and conversations: questions, the rows of answers
while they stream, ended answers, and the sweep of answers whose writer died.

Core statements on the tables (no ORM session, no unit of work: some run twice a second),
each run once for all its rows (executemany). Questions and ended answers go through one
group-commit writer (`db/batch.py`): the rows of requests that arrive together in one
transaction. The streaming saves and the sweep take that writer's lock, so that no two
writers of one process wait for each other inside SQLite."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Insert, Table, bindparam, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from backend.db.batch import BatchWriter
from backend.db.models import Conversation, Message, MessageStatus, utcnow

_MESSAGES = cast(Table, Message.__table__)
_CONVERSATIONS = cast(Table, Conversation.__table__)
MESSAGE_COLUMNS = ("id", "conversation_id", "parent_id", "role", "content", "status", "model",
                   "finish_reason", "error", "prompt_tokens", "completion_tokens", "timings",
                   "sources", "search_query", "revision_of", "revision_feedback",
                   "instance", "created_at", "updated_at")  # fmt: skip
ENDED_COLUMNS = ("content", "updated_at", "status", "model", "finish_reason", "error",
                 "prompt_tokens", "completion_tokens", "timings", "sources",
                 "search_query")  # fmt: skip


def message_row(**values: Any) -> dict[str, Any]:
    """The parameters of `NEW_MESSAGE`: `values` by column, the other columns NULL."""
    if unknown := values.keys() - set(MESSAGE_COLUMNS):
        raise ValueError(f"not columns of a new message: {sorted(unknown)}")
    return {f"new_{c}": values.get(c) for c in MESSAGE_COLUMNS}


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
        *(bindparam(f"new_{name}", type_=columns[name].type) for name in MESSAGE_COLUMNS),
        next_seq,
    ).where(exists().where(Conversation.id == conversation_id))
    return insert(_MESSAGES).from_select([*MESSAGE_COLUMNS, "seq"], row)


NEW_CONVERSATION = insert(_CONVERSATIONS)
NEW_MESSAGE = _new_message_statement()
# The text of a streaming answer that grew (its heartbeat is written with all the others').
_GROWN = (
    update(_MESSAGES)
    .where(
        _MESSAGES.c.id == bindparam("answer_id"),
        _MESSAGES.c.status == MessageStatus.STREAMING.value,
    )
    .values(content=bindparam("text"))
)
# An ended answer whose row was written while it streamed.
_ENDED = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("answer_id"))
    .values(
        {name: bindparam(f"new_{name}", type_=_MESSAGES.c[name].type) for name in ENDED_COLUMNS}
    )
)
# A conversation that got a new message is active now, and goes on from that message.
_ACTIVE = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("conversation_id"))
    .values(
        updated_at=bindparam("new_updated_at", type_=_CONVERSATIONS.c.updated_at.type),
        active_message_id=None,
    )
)
_WRITES = (NEW_CONVERSATION, NEW_MESSAGE, _ENDED, _ACTIVE)  # the writer's, in this order


def _activity(conversation_id: str, now: datetime) -> dict[str, Any]:
    """The parameters of `_ACTIVE`."""
    return {"conversation_id": conversation_id, "new_updated_at": now}


@dataclass
class Grown:
    """A streaming answer's row: new (`row`, written with its heartbeat) or grown (`text`)."""

    answer_id: str
    conversation_id: str
    text: str | None = None  # its text, when it grew since the last save
    row: dict[str, Any] | None = None  # its first row (`message_row`), when it has none yet


class AnswerWrites:
    """The hot path's writes, on `engine`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.writer = BatchWriter(engine, _WRITES)
        self.lock = self.writer.lock  # held by every write transaction of this process

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
            NEW_MESSAGE: [
                message_row(
                    id=message_id,
                    conversation_id=conversation_id,
                    parent_id=parent_id,
                    role="user",
                    content=text,
                    status=MessageStatus.COMPLETE.value,
                    created_at=now,
                )
            ]
        }
        if title is None:
            rows[_ACTIVE] = [_activity(conversation_id, now)]
        else:
            conversation = {"id": conversation_id, "user_id": user_id, "title": title}
            rows[NEW_CONVERSATION] = [{**conversation, "created_at": now, "updated_at": now}]
        await self.writer.write(rows)

    async def save_streaming(
        self, answers: Sequence[Grown], alive: Iterable[str], now: datetime
    ) -> dict[str, bool]:
        """One transaction: the first rows of answers that began, the text of those that
        grew (one statement for each), and a heartbeat for every answer of `alive` still
        `streaming`. Returns those by id, with whether another process asked to stop it; a
        new answer missing from it had its conversation deleted meanwhile."""
        rows = [a.row for a in answers if a.row is not None]
        grown = [{"answer_id": a.answer_id, "text": a.text} for a in answers if a.text is not None]
        async with self.lock, self.engine.connect() as connection:
            if rows:
                await connection.execute(NEW_MESSAGE, rows)
            if grown:
                await connection.execute(_GROWN, grown)
            beat = await connection.execute(
                update(_MESSAGES)
                .where(
                    _MESSAGES.c.id.in_(list(alive)),
                    _MESSAGES.c.status == MessageStatus.STREAMING.value,
                )
                .values(updated_at=now)
                .returning(_MESSAGES.c.id, _MESSAGES.c.stop_requested)
            )
            streaming: dict[str, bool] = {row[0]: row[1] for row in beat}
            active = {a.conversation_id for a in answers if a.row and a.answer_id in streaming}
            if active:
                await connection.execute(_ACTIVE, [_activity(c, now) for c in active])
            await connection.commit()
        return streaming

    async def ended(self, *, row: dict[str, Any], row_written: bool) -> None:
        """Store an ended answer (`row`: `message_row` parameters): update the row it got
        while streaming, or write it (with its conversation made active)."""
        if row_written:
            values = {f"new_{name}": row[f"new_{name}"] for name in ENDED_COLUMNS}
            await self.writer.write({_ENDED: [{"answer_id": row["new_id"], **values}]})
        else:
            now = row["new_updated_at"]
            activity = _activity(row["new_conversation_id"], now)
            await self.writer.write({NEW_MESSAGE: [row], _ACTIVE: [activity]})

    async def sweep(self, *, older_than: datetime, spare: Iterable[str]) -> int:
        """Mark `interrupted` the streaming answers not saved since `older_than` (their writer
        died), but those of `spare`; their text stays. Returns how many."""
        async with self.lock, self.engine.begin() as connection:
            result = await connection.execute(
                update(_MESSAGES)
                .where(
                    _MESSAGES.c.status == MessageStatus.STREAMING.value,
                    _MESSAGES.c.updated_at < older_than,
                    _MESSAGES.c.id.not_in(list(spare)),
                )
                .values(
                    status=MessageStatus.INTERRUPTED.value,
                    finish_reason="cancelled",
                    updated_at=utcnow(),
                )
            )
        return int(result.rowcount or 0)
