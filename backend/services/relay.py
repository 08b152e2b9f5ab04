"""The streaming loop: between an answer being generated and the readers of its events.

`Relay.start` runs an answer's events (`ChatService.answer(turn)`) in a task of its own and
keeps them in an `AnswerLog`. A reader follows a log from a position; each time it is ready
to send, it gets everything that queued up since as one event: token deltas concatenated,
so a slow reader makes fewer, larger writes and never loses or reorders a character.

A `token` event's id (and the last event's) is the number of answer characters up to its
end, so `Last-Event-ID` says exactly what a reader has, and `GET /messages/{id}/stream`
resumes from there: from the log while this process holds it, else from the database.

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
from collections.abc import AsyncGenerator, AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import repository
from backend.db.models import Message
from backend.services.chat import end_event
from backend.services.turns import ChatEvent, OnDisconnect

log = logging.getLogger(__name__)

KEEP_ENDED_SECONDS = 60.0  # an ended answer stays resumable from memory this long


class AnswerLog:
    """One answer's events so far: the head (`meta`, `sources`), its text in parts, and
    its last event once it ends."""

    def __init__(self, *, message_id: str, user_id: str, on_disconnect: OnDisconnect) -> None:
        self.message_id = message_id
        self.user_id = user_id
        self.on_disconnect = on_disconnect
        self.head: list[ChatEvent] = []
        self.parts: list[str] = []
        self.length = 0
        self.end: ChatEvent | None = None
        self.task: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Event] = set()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def put(self, event: ChatEvent) -> None:
        if event.event == "token":
            text = event.data["text"]
            self.parts.append(text)
            self.length += len(text)
        elif event.event in ("done", "error"):
            event.id = self.length
            self.end = event
        else:
            self.head.append(event)
        for wake in self._readers:
            wake.set()

    def stop(self) -> None:
        """End the answer now; its text so far is kept as `interrupted`."""
        if self.end is None and self.task is not None:
            self.task.cancel()

    async def follow(self, after: int = 0) -> AsyncGenerator[ChatEvent, None]:
        """The events from character `after` on, live until the last one; what queued up
        while the reader was busy comes as one `token` event."""
        wake = asyncio.Event()
        self._readers.add(wake)
        try:
            heads, parts = 0, 0
            if after:  # a resumed reader: the head again, then the text it has not seen
                parts, text = len(self.parts), self.text
                while heads < len(self.head):
                    heads += 1
                    yield self.head[heads - 1]
                if text[after:]:
                    yield ChatEvent("token", {"text": text[after:]}, id=len(text))
            while True:
                wake.clear()
                while heads < len(self.head):
                    heads += 1
                    yield self.head[heads - 1]
                if parts < len(self.parts):
                    queued = "".join(self.parts[parts:])
                    parts = len(self.parts)
                    yield ChatEvent("token", {"text": queued}, id=self.length)
                    continue  # more may have come while that was being sent
                if self.end is not None:
                    yield self.end
                    return
                await wake.wait()
        finally:
            self._readers.discard(wake)
            if not self._readers and self.on_disconnect == "stop":
                self.stop()  # the last reader left: stop generating


class Relay:
    """The answers this process is generating (and those that ended a moment ago), by
    message id."""

    def __init__(self) -> None:
        self.logs: dict[str, AnswerLog] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: Counter[str] = Counter()  # user id -> answers being generated

    def start(
        self,
        events: AsyncIterator[ChatEvent],
        *,
        message_id: str,
        user_id: str,
        on_disconnect: OnDisconnect,
    ) -> AnswerLog:
        answer = AnswerLog(message_id=message_id, user_id=user_id, on_disconnect=on_disconnect)
        answer.task = asyncio.create_task(self._run(answer, events), name=f"answer {message_id}")
        self._tasks.add(answer.task)
        self.logs[message_id] = answer
        self._running[user_id] += 1
        answer.task.add_done_callback(lambda task: self._ended(task, user_id))
        return answer

    def _ended(self, task: asyncio.Task[None], user_id: str) -> None:
        self._tasks.discard(task)
        self._running[user_id] -= 1
        if self._running[user_id] <= 0:
            del self._running[user_id]

    def running(self, user_id: str) -> int:
        """How many of the user's answers this replica is generating (asked on every
        request: counted, not searched for among the answers kept for resuming)."""
        return self._running[user_id]

    def stop(self, message_id: str) -> None:
        """Stop an answer of this process, if it still runs (asked through another one)."""
        if (answer := self.logs.get(message_id)) is not None:
            answer.stop()

    async def complete(
        self, events: AsyncIterator[ChatEvent], *, message_id: str, user_id: str
    ) -> ChatEvent:
        """Run an answer that nobody streams to its end; returns its last event. Counted
        and stopped like a stream; the caller leaving does not stop it."""
        answer = self.start(events, message_id=message_id, user_id=user_id, on_disconnect="finish")
        assert answer.task is not None
        await asyncio.shield(answer.task)
        assert answer.end is not None, "an answer always ends with `done` or `error`"
        return answer.end

    def find(self, message_id: str, user_id: str) -> AnswerLog | None:
        answer = self.logs.get(message_id)
        return answer if answer is not None and answer.user_id == user_id else None

    async def _run(self, answer: AnswerLog, events: AsyncIterator[ChatEvent]) -> None:
        try:
            async for event in events:
                answer.put(event)
        except asyncio.CancelledError:
            if answer.end is None:  # for a reader that comes back to a stopped answer
                answer.put(ChatEvent("error", INTERRUPTED))
        except Exception:
            log.exception("answer %s failed", answer.message_id)
            answer.put(ChatEvent("error", FAILED))
        finally:
            asyncio.get_running_loop().call_later(
                KEEP_ENDED_SECONDS, self.logs.pop, answer.message_id, None
            )

    async def close(self) -> None:
        """Cancel the answers still running (their text is kept as `interrupted`)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def follow_stored(
    sessions: async_sessionmaker[AsyncSession],
    *,
    message_id: str,
    user_id: str,
    after: int = 0,
    poll_seconds: float = 0.5,
) -> AsyncIterator[ChatEvent]:
    """An answer this process does not hold, from its row: its head, the text past
    `after`, and while another replica still writes it (`streaming`), what it saves next."""
    position, head_sent = after, False
    while True:
        async with sessions() as session:
            message = await repository.get_owned_message(
                session=session, user_id=user_id, message_id=message_id
            )
        if message is None:  # deleted meanwhile
            yield ChatEvent("error", GONE, id=position)
            return
        if not head_sent:
            head_sent = True
            yield meta_of(message)
            yield ChatEvent("sources", {"sources": message.sources or []})
        if len(message.content) > position:
            yield ChatEvent("token", {"text": message.content[position:]}, id=len(message.content))
            position = len(message.content)
        if message.status != "streaming":
            end = end_event(message)
            end.id = position
            yield end
            return
        await asyncio.sleep(poll_seconds)


def meta_of(message: Message) -> ChatEvent:
    return ChatEvent(
        "meta",
        {
            "conversation_id": message.conversation_id,
            "user_message_id": message.parent_id,
            "assistant_message_id": message.id,
            "model": message.model,
            "instance": message.instance,
        },
    )


GONE = {"code": "not_found", "message": "The answer was deleted."}
INTERRUPTED = {"code": "interrupted", "message": "The answer was stopped before it ended."}
FAILED = {"code": "model_error", "message": "The answer failed; please try again."}
