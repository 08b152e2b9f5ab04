"""The streaming loop: between an answer being generated and the readers of its events.

`Relay.start` runs the work that writes an `Answer` (the pipeline) in a task of its own. A
reader follows the answer from a position (`Relay.follow`); each time it is ready to send,
it gets everything that queued up since as one `token` event: deltas concatenated, so a
slow reader makes fewer, larger writes and never loses or reorders a character.

A `token` event's id (and the last event's) is the number of answer characters up to its
end, so `Last-Event-ID` says exactly what a reader has, and `GET /messages/{id}/stream`
resumes from there: from the answer while this process holds it, else from its row
(`follow_stored`).

What a disconnect means is the answer's own: `stop` cancels it when its last reader leaves
(the text so far is kept as `interrupted`); `finish` lets it complete, for a later resume.
An answer asked for in one JSON response runs here too (`complete`): counted like a stream,
and stopped like one.

`POST /messages/{id}/stop` stops an answer of this process at once; one that another worker
or replica generates is asked through its row (`stop_requested`), which its writer reads at
its next save (`AnswerRecorder`) and answers with `Relay.stop`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import repository
from backend.db.models import MessageStatus
from backend.services.answer import Answer
from backend.services.events import AnswerEvent, Error, Status, Token
from backend.services.turns import OnDisconnect

log = logging.getLogger(__name__)

KEEP_ENDED_SECONDS = 60.0  # an ended answer stays resumable from memory this long
FAILED = "The answer failed; please try again."


@dataclass
class _Running:
    answer: Answer
    task: asyncio.Task[None]
    on_disconnect: OnDisconnect


class Relay:
    """The answers this process is generating (and those that ended a moment ago), by
    message id."""

    def __init__(self) -> None:
        self._answers: dict[str, _Running] = {}
        self._running: Counter[str] = Counter()  # user id -> answers being generated

    def start(
        self, answer: Answer, work: Coroutine[Any, Any, None], *, on_disconnect: OnDisconnect
    ) -> None:
        """Run `work`, which writes `answer` to its end, in a task of its own."""
        task = asyncio.create_task(work, name=f"answer {answer.message_id}")
        self._answers[answer.message_id] = _Running(answer, task, on_disconnect)
        self._running[answer.user_id] += 1
        task.add_done_callback(lambda task: self._ended(task, answer))

    def _ended(self, task: asyncio.Task[None], answer: Answer) -> None:
        self._running[answer.user_id] -= 1
        if self._running[answer.user_id] <= 0:
            del self._running[answer.user_id]
        if not answer.ended:  # stopped before it could end itself, or failed: for its readers
            if task.cancelled():
                answer.interrupt()
            else:
                log.error("answer %s failed", answer.message_id, exc_info=task.exception())
                answer.fail("model_error", FAILED)
            answer.close()
        elif not task.cancelled():
            task.exception()  # (retrieved: an answer that ended has said what went wrong)
        asyncio.get_running_loop().call_later(
            KEEP_ENDED_SECONDS, self._answers.pop, answer.message_id, None
        )

    async def complete(self, answer: Answer, work: Coroutine[Any, Any, None]) -> Answer:
        """Run an answer that nobody streams to its end. Counted and stopped like a stream;
        the caller leaving does not stop it."""
        self.start(answer, work, on_disconnect="finish")
        await asyncio.wait([self._answers[answer.message_id].task])
        return answer

    def running(self, user_id: str) -> int:
        """How many of the user's answers this replica is generating (asked on every
        request: counted, not searched for among the answers kept for resuming)."""
        return self._running[user_id]

    def find(self, message_id: str, user_id: str) -> Answer | None:
        running = self._answers.get(message_id)
        if running is None or running.answer.user_id != user_id:
            return None
        return running.answer

    def stop(self, message_id: str) -> None:
        """End an answer of this process now, if it still runs; its text so far is kept as
        `interrupted` (asked through this process or another one)."""
        running = self._answers.get(message_id)
        if running is not None and not running.answer.ended:
            running.task.cancel()

    async def follow(self, answer: Answer, after: int = 0) -> AsyncGenerator[AnswerEvent, None]:
        """The answer's events from character `after` on, live until the last one; what
        queued up while the reader was busy comes as one `token` event. A reader that comes
        back (`after` > 0) gets the head again, then the text it has not seen."""
        wake = answer.watch()
        try:
            heads, parts, position = 0, 0, None
            if after:
                heads, parts, text = len(answer.head), len(answer.parts), answer.text
                for event in answer.head[:heads]:
                    yield event
                if text[after:]:
                    yield Token(text[after:], id=len(text))
            while True:
                wake.clear()
                if heads < len(answer.head):
                    for event in answer.head[heads:]:
                        heads += 1
                        yield event
                elif not heads and answer.position not in (None, position):
                    position = answer.position
                    yield Status(position)
                    continue
                if parts < len(answer.parts):
                    queued = "".join(answer.parts[parts:])
                    parts = len(answer.parts)
                    yield Token(queued, id=answer.length)
                    continue  # more may have come while that was being sent
                if answer.ended:
                    yield answer.last_event()
                    return
                await wake.wait()
        finally:
            answer.unwatch(wake)
            running = self._answers.get(answer.message_id)
            if not answer.watched and running is not None and running.on_disconnect == "stop":
                self.stop(answer.message_id)  # the last reader left: stop generating

    async def close(self) -> None:
        """Cancel the answers still running (their text is kept as `interrupted`)."""
        tasks = [r.task for r in self._answers.values() if not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def follow_stored(
    sessions: async_sessionmaker[AsyncSession],
    *,
    message_id: str,
    user_id: str,
    after: int = 0,
    poll_seconds: float = 0.5,
) -> AsyncGenerator[AnswerEvent, None]:
    """An answer this process does not hold, from its row: its head, the text past
    `after`, and while another replica still writes it (`streaming`), what it saves next."""
    position, head_sent = after, False
    while True:
        async with sessions() as session:
            message = await repository.get_owned_message(
                session=session, user_id=user_id, message_id=message_id
            )
        if message is None:  # deleted meanwhile
            yield Error("not_found", "The answer was deleted.", id=position)
            return
        answer = Answer.from_row(message, user_id=user_id)
        if not head_sent:
            head_sent = True
            for event in answer.head:
                yield event
        if answer.length > position:
            yield Token(answer.text[position:], id=answer.length)
            position = answer.length
        if answer.status != MessageStatus.STREAMING:
            last = answer.last_event()
            last.id = position
            yield last
            return
        await asyncio.sleep(poll_seconds)
