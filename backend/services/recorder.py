"""Answers are durable while they stream: `AnswerRecorder` observes each answer and writes
it to the database (the statements: `db/answers.py`).

An answer's row appears at its first token (status `streaming`; within STREAM_SAVE_SECONDS
while answers keep beginning), and one background task (`AnswerRecorder.run`) saves every
growing answer of this process in one transaction every STREAM_SAVE_SECONDS, with a
heartbeat (`updated_at`). When the answer ends its row gets its final fields. Rows whose
writer stopped heart-beating (a crashed replica) are marked `interrupted`, their text
kept, by every replica's start and periodic sweep. The heartbeat also reads back which
answers another replica was asked to stop (`stop_requested`): those go to `on_stop`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from backend.db.answers import AnswerWrites, Grown, message_row
from backend.db.models import MessageStatus, utcnow
from backend.services.answer import Answer, AnswerObserver

log = logging.getLogger(__name__)


class AnswerRecorder(AnswerObserver):
    def __init__(
        self,
        writes: AnswerWrites,
        *,
        save_seconds: float,
        stale_seconds: float,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        self.writes = writes
        self.save_seconds = save_seconds
        self.stale_seconds = stale_seconds
        self.on_stop = on_stop  # called with an answer's id when asked to stop it
        self.streaming: dict[str, Answer] = {}  # message id -> answer being saved
        self.saved: dict[str, int] = {}  # message id -> characters in its row
        self.lock = asyncio.Lock()  # one save of streaming rows at a time
        self.wake = asyncio.Event()

    # --- while streaming -------------------------------------------------------------------
    def began(self, answer: Answer) -> None:
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
        """One transaction: new rows for answers that began, the text of those that grew,
        a heartbeat for all."""
        if not self.streaming:
            return
        async with self.lock:
            now, answers = utcnow(), []
            for answer in list(self.streaming.values()):
                text, saved = answer.text, self.saved.get(answer.message_id)
                if saved is None:
                    row = self._row(answer, content=text, status=MessageStatus.STREAMING.value,
                                    updated_at=now)  # fmt: skip
                    answers.append(Grown(answer.message_id, str(answer.conversation_id), row=row))
                elif len(text) != saved:
                    answers.append(Grown(answer.message_id, str(answer.conversation_id), text))
                self.saved[answer.message_id] = len(text)
            alive = await self.writes.save_streaming(answers, list(self.saved), now)
            for grown in answers:
                if grown.row is not None and grown.answer_id not in alive:
                    log.info("conversation %s was deleted mid-answer", grown.conversation_id)
                    self.streaming.pop(grown.answer_id, None)
                    self.saved.pop(grown.answer_id, None)
        if self.on_stop is not None:
            for message_id, stop in alive.items():
                if stop:  # stopped through another replica (idempotent)
                    self.on_stop(message_id)

    async def sweep(self) -> int:
        """Mark `interrupted` the answers whose writer stopped heart-beating; their text
        stays. Returns how many. This recorder's own answers are alive whatever their
        heartbeat says (a database slow to take writes delays it)."""
        swept = await self.writes.sweep(
            older_than=utcnow() - timedelta(seconds=self.stale_seconds),
            spare=self.saved.keys() | self.streaming.keys(),
        )
        if swept:
            log.warning("marked %d answers interrupted: their writer stopped", swept)
        return swept

    # --- at the end ----------------------------------------------------------------------
    async def ended(self, answer: Answer) -> None:
        """Store the ended answer (when it is stored at all)."""
        if answer.conversation_id is None:
            return
        async with self.lock:  # a save under way may be writing its streaming row
            self.streaming.pop(answer.message_id, None)
            row_written = self.saved.pop(answer.message_id, None) is not None
        row = self._row(
            answer,
            content=answer.text,
            status=answer.status.value,
            finish_reason=answer.finish_reason,
            error=answer.error,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            timings=answer.timings,
            updated_at=utcnow(),
        )
        await self.writes.ended(row=row, row_written=row_written)

    def _row(self, answer: Answer, **values: Any) -> dict[str, Any]:
        return message_row(
            id=answer.message_id,
            conversation_id=answer.conversation_id,
            parent_id=answer.parent_id,
            role="assistant",
            created_at=answer.created_at,
            model=answer.model,
            sources=answer.sources,
            search_query=answer.search_query,
            revision_of=answer.revision_of,
            revision_feedback=answer.revision_feedback,
            instance=answer.instance,
            **values,
        )
