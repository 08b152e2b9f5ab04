"""The chat pipeline: history, (retrieval), prompt, streamed answer, persistence.
Knows nothing of HTTP: `start`/`regenerate` check a request and make a `ChatTurn` (plain
data); `answer(turn)` yields the `ChatEvent`s that the API frames as SSE or JSON."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.common.errors import InvalidInput, NotFound, UpstreamFailed
from backend.common.settings import Settings
from backend.db import repository
from backend.db.models import Message, User, new_id, utcnow
from backend.llm import ChatModelHandle, ModelCatalog
from backend.llm.errors import ModelFailure
from backend.llm.queue import OnQueued
from backend.llm.streaming import ModelStream, StreamPolicy, open_stream
from backend.retrieval.filters import checked_filter
from backend.retrieval.retriever import Passage
from backend.services.answers import Answer, AnswerRecorder
from backend.services.documents import DocumentService
from backend.services.prompt import BuiltPrompt, build_prompt, check_fits, history_messages
from backend.services.turns import ChatEvent, ChatOptions, ChatTurn

if TYPE_CHECKING:
    from backend.services.relay import Relay

log = logging.getLogger(__name__)

TITLE_CHARS = 60


class ChatService:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        models: ModelCatalog,
        documents: DocumentService,
        recorder: AnswerRecorder,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self.documents = documents
        self.recorder = recorder
        self.policy = StreamPolicy.from_settings(settings)

    # --- step 0: check the request and store what the user typed ---------------------------
    def _params(self, options: ChatOptions) -> dict[str, Any]:
        max_tokens = options.max_tokens or self.settings.max_tokens_default
        if max_tokens > self.settings.max_tokens_limit:
            raise InvalidInput(
                f"max_tokens must be at most {self.settings.max_tokens_limit}",
                field=("body", "max_tokens"),
            )
        params: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": (
                options.temperature
                if options.temperature is not None
                else self.settings.temperature_default
            ),
        }
        if options.top_p is not None:
            params["top_p"] = options.top_p
        if options.stop:
            params["stop"] = list(options.stop)
        return params

    def _turn(
        self,
        *,
        user: User,
        question: str,
        options: ChatOptions,
        history: Sequence[tuple[str, str]],
        system_prompt: str | None = None,
        conversation_id: str | None = None,
        user_message_id: str | None = None,
    ) -> ChatTurn:
        """The one place a turn is made: the request's options checked and resolved."""
        params = self._params(options)
        models = self.models.choose(options.model, question)
        if options.retrieval.enabled:
            checked_filter(options.retrieval.filter, ("body", "retrieval", "filter"))
        return ChatTurn(
            conversation_id=conversation_id,
            user_message_id=user_message_id or new_id(),
            assistant_message_id=new_id(),
            question=question,
            history=list(history),
            models=models,
            params=params,
            user=user,
            retrieval=options.retrieval,
            system_prompt=system_prompt or self.settings.system_prompt,
        )

    async def start(
        self,
        *,
        user: User,
        message: str,
        conversation_id: str | None,
        options: ChatOptions,
        history: list[tuple[str, str]] | None = None,
        system_prompt: str | None = None,
        persist: bool = True,
    ) -> ChatTurn:
        """Check the request, then commit the user's message (before any generation).

        `history` (role, content) replaces the stored one (clients of the OpenAI-compatible
        API send the whole exchange each time); `persist=False` stores nothing at all.
        """
        if len(message) > self.settings.max_message_chars:
            raise InvalidInput(
                f"message is {len(message)} characters long; the limit is "
                f"{self.settings.max_message_chars}",
                field=("body", "message"),
            )
        turn = self._turn(
            user=user,
            question=message,
            options=options,
            history=history or [],
            system_prompt=system_prompt,
        )
        await turn.models[0].admit()  # 503 when the local model's line is full
        # Refuse a message that cannot fit before anything is stored.
        check_fits(
            system=turn.system_prompt,
            question=message,
            count_tokens=turn.models[0].count_tokens,
            budget=turn.models[0].context_window - turn.params["max_tokens"],
        )
        if not persist:
            return turn
        branch: list[Message] = []
        if conversation_id is not None:
            async with self.sessions() as session:
                conversation = await repository.get_conversation(
                    session=session, user_id=user.id, conversation_id=conversation_id
                )
                if conversation is None:
                    raise NotFound("conversation not found", field=("body", "conversation_id"))
                stored = await repository.conversation_messages(
                    session=session, conversation_id=conversation_id
                )
            branch = repository.branch_ending_at(stored, stored[-1].id if stored else None)
        turn.conversation_id = conversation_id or new_id()
        await self.recorder.question(
            user_id=user.id,
            conversation_id=turn.conversation_id,
            message_id=turn.user_message_id,
            parent_id=branch[-1].id if branch else None,
            text=message,
            title=_title(message) if conversation_id is None else None,
        )
        if history is None:
            turn.history = [(m.role, m.content) for m in branch if m.content]
        turn.started = time.perf_counter()
        return turn

    async def regenerate(
        self, *, user: User, conversation_id: str, options: ChatOptions
    ) -> ChatTurn:
        """A new answer to the conversation's last question, beside the previous ones (the
        old answer stays, as a sibling branch)."""
        async with self.sessions() as session:
            conversation = await repository.get_conversation(
                session=session, user_id=user.id, conversation_id=conversation_id
            )
            if conversation is None:
                raise NotFound("conversation not found", field=("path", "conversation_id"))
            stored = await repository.conversation_messages(
                session=session, conversation_id=conversation.id
            )
        branch = repository.branch_ending_at(stored, stored[-1].id if stored else None)
        questions = [i for i, m in enumerate(branch) if m.role == "user"]
        if not questions:
            raise InvalidInput(
                "the conversation has no question to answer again",
                field=("path", "conversation_id"),
            )
        question = branch[questions[-1]]
        turn = self._turn(
            user=user,
            question=question.content,
            options=options,
            history=[(m.role, m.content) for m in branch[: questions[-1]] if m.content],
            conversation_id=conversation.id,
            user_message_id=question.id,
        )
        await turn.models[0].admit()
        return turn

    async def complete(self, turn: ChatTurn, relay: Relay) -> Message:
        """Run the answer to its end in `relay` (counted and stoppable like a stream) and
        return it as stored: a stopped one as `interrupted`; one that failed raises
        UpstreamFailed with its error's code."""
        end = await relay.complete(
            self.answer(turn), message_id=turn.assistant_message_id, user_id=turn.user.id
        )
        stored = end.stored
        if stored is None and turn.conversation_id is not None:  # stopped: its row has it
            async with self.sessions() as session:
                stored = await session.get(Message, turn.assistant_message_id)
        if end.event == "error" and (stored is None or stored.status == "error"):
            raise UpstreamFailed(end.data["message"], code=end.data["code"])
        assert stored is not None
        return stored

    # --- steps 1-5: answer -------------------------------------------------------------
    def _meta(self, turn: ChatTurn, model: ChatModelHandle) -> ChatEvent:
        return ChatEvent(
            "meta",
            {
                "conversation_id": turn.conversation_id,
                "user_message_id": turn.user_message_id,
                "assistant_message_id": turn.assistant_message_id,
                "model": model.name,
                "instance": self.settings.instance_name,
            },
        )

    async def _retrieve(self, turn: ChatTurn, answer: Answer) -> list[Passage]:
        if not turn.retrieval.enabled:
            return []
        started = time.perf_counter()
        try:
            found = await self.documents.search(
                user=turn.user,
                query=turn.question,
                scopes=turn.retrieval.namespaces,
                filter_=turn.retrieval.filter,
                top_k=turn.retrieval.top_k,
                alpha=turn.retrieval.alpha,
                group_by=turn.retrieval.group_by,
            )
        except Exception:
            log.exception("retrieval failed")
            answer.fail("retrieval_error", "Searching the documents failed; please try again.")
            return []
        finally:
            answer.retrieval_ms = (time.perf_counter() - started) * 1000
        return found.passages

    def _prompt(
        self, turn: ChatTurn, model: ChatModelHandle, passages: list[Passage]
    ) -> BuiltPrompt:
        return build_prompt(
            system=turn.system_prompt,
            history=history_messages(turn.history),
            question=turn.question,
            count_tokens=model.count_tokens,
            budget=model.context_window - turn.params["max_tokens"],
            passages=[(p.text, _title_of(p)) for p in passages],
            context_share=self.settings.context_share,
        )

    async def _open(
        self, turn: ChatTurn, passages: list[Passage], answer: Answer, on_queued: OnQueued | None
    ) -> tuple[ModelStream, BuiltPrompt] | None:
        """The first model that starts answering, trying the fallbacks in order."""
        failure: ModelFailure | None = None
        for model in turn.models:
            prompt = self._prompt(turn, model, passages)
            try:
                opened = await open_stream(
                    model, prompt.messages, turn.params, self.policy, on_queued
                )
                return opened, prompt
            except ModelFailure as exc:
                failure = exc
                log.warning("model %s unavailable: %s", model.name, exc)
                answer.model = model
                if not exc.fallback:
                    break
        assert failure is not None
        answer.fail(failure.code, failure.user_message())
        return None

    async def _begin(
        self, turn: ChatTurn, answer: Answer, on_queued: OnQueued | None = None
    ) -> ModelStream | None:
        """Retrieval, prompt and the first model that starts answering; None (and `answer`
        failed) if none does. Fills in the answer's model, sources and prompt size."""
        passages = await self._retrieve(turn, answer)
        opened = (
            None
            if answer.status == "error"
            else await self._open(turn, passages, answer, on_queued)
        )
        if opened is None:
            return None
        stream, prompt = opened
        answer.model = stream.handle
        answer.counted_prompt_tokens = prompt.prompt_tokens
        answer.sources = [p.as_source() for p in passages[: prompt.sources_used]]
        return stream

    async def answer(self, turn: ChatTurn) -> AsyncGenerator[ChatEvent, None]:
        """The answer's events: `meta`, `sources`, `token`..., then `done` or `error`, the
        answer stored before the last one; a reader that leaves keeps it `interrupted`.
        One generator from model chunk to event: this loop runs once per token."""
        answer = Answer(
            conversation_id=turn.conversation_id,
            message_id=turn.assistant_message_id,
            user_id=turn.user.id,
            parent_id=turn.user_message_id,
            created_at=utcnow(),
            started=turn.started,
            model=turn.models[0],
        )
        try:
            if any(model.queued for model in turn.models):
                begun = _Waiting(self._begin, turn, answer)
                async for position in begun.positions():
                    yield ChatEvent("status", {"state": "queued", "position": position})
                stream = begun.stream
            else:
                stream = await self._begin(turn, answer)
            yield self._meta(turn, answer.model)
            if stream is not None:
                yield ChatEvent("sources", {"sources": answer.sources})
                try:
                    async for delta in stream.deltas():
                        if text := answer.take(delta):
                            if len(answer.parts) == 1:
                                self.recorder.first_token(answer)  # saved from now on
                            yield ChatEvent("token", {"text": text})
                except ModelFailure as exc:
                    log.warning("model %s failed mid-answer: %s", stream.handle.name, exc)
                    answer.fail(exc.code, exc.user_message())
                except Exception:
                    log.exception("model %s failed mid-answer", stream.handle.name)
                    answer.fail(
                        "model_error", "The model failed while answering; please try again."
                    )
        except (asyncio.CancelledError, GeneratorExit):
            await self.recorder.interrupted(answer)
            raise
        stored = await self.recorder.finish(answer)
        yield end_event(stored, answer.error_code)


class _Waiting:
    """`_begin` of an answer that may wait for its model: the positions it is told while
    it waits, as they come, then the opened stream (`stream`)."""

    def __init__(
        self,
        begin: Callable[[ChatTurn, Answer, OnQueued], Awaitable[ModelStream | None]],
        turn: ChatTurn,
        answer: Answer,
    ) -> None:
        self.news: asyncio.Queue[int] = asyncio.Queue()
        self.task = asyncio.ensure_future(begin(turn, answer, self.news.put_nowait))
        self.stream: ModelStream | None = None

    async def positions(self) -> AsyncIterator[int]:
        try:
            while not self.task.done():
                news = asyncio.ensure_future(self.news.get())
                await asyncio.wait({self.task, news}, return_when=asyncio.FIRST_COMPLETED)
                if news.done():
                    yield news.result()
                else:
                    news.cancel()
            self.stream = self.task.result()
        finally:
            if not self.task.done():  # the reader left while waiting: leave the line
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)


def end_event(stored: Message, error_code: str | None = None) -> ChatEvent:
    """An ended answer's last event, from its row: `done`, or `error` with its code."""
    if stored.status != "complete":
        code = error_code or ("interrupted" if stored.status == "interrupted" else "model_error")
        message = stored.error or "The answer was stopped before it ended."
        return ChatEvent("error", {"code": code, "message": message}, stored)
    done = {
        "finish_reason": stored.finish_reason,
        "model": stored.model,
        "usage": {
            "prompt_tokens": stored.prompt_tokens,
            "completion_tokens": stored.completion_tokens,
        },
        "timings": stored.timings,
    }
    return ChatEvent("done", done, stored)


def _title_of(passage: Passage) -> str | None:
    title = passage.metadata.get("title") or passage.metadata.get("source")
    return str(title) if title else None


def _title(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
