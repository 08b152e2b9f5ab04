"""The chat pipeline: history, (retrieval), prompt, streamed answer, persistence.
Knows nothing of HTTP: it yields `ChatEvent`s that the API frames as SSE or JSON."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import repository
from backend.db.models import Conversation, Message, User, new_id, utcnow
from backend.errors import InvalidInput, NotFound
from backend.llm import ChatModelHandle, ModelRouter
from backend.llm.errors import ModelFailure
from backend.llm.streaming import ModelStream, StreamPolicy, open_stream
from backend.metrics import Metrics
from backend.retrieval.retriever import Passage
from backend.services.documents import DocumentService, Scope, checked_filter
from backend.services.prompt import BuiltPrompt, build_prompt, history_messages
from backend.settings import Settings

log = logging.getLogger(__name__)

TITLE_CHARS = 60


@dataclass
class ChatEvent:
    """One event of an answer: `meta`, `sources`, `token`, `done` or `error`."""

    event: str
    data: dict[str, Any]


@dataclass
class RetrievalOptions:
    enabled: bool = True
    namespaces: list[Scope] | None = None
    filter: dict[str, Any] | None = None
    top_k: int | None = None
    alpha: float | None = None


@dataclass
class ChatOptions:
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)


@dataclass
class ChatTurn:
    """A user message that is stored and awaits its answer; `events()` produces it."""

    service: ChatService
    conversation_id: str | None  # None: a turn that stores nothing
    user_message_id: str
    assistant_message_id: str
    question: str
    history: list[tuple[str, str]]
    models: list[ChatModelHandle]  # the one chosen first, then the fallbacks
    params: dict[str, Any]  # max_tokens, temperature, top_p, stop
    user: User
    retrieval: RetrievalOptions
    system_prompt: str
    persist: bool = True
    started: float = field(default_factory=time.perf_counter)
    result: Message | None = None  # the answer, once it has ended

    def events(self) -> AsyncIterator[ChatEvent]:
        return self.service._answer(self)


class ChatService:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        models: ModelRouter,
        documents: DocumentService,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self.documents = documents
        self.metrics = metrics or Metrics()
        self.policy = StreamPolicy.from_settings(settings)

    # --- step 0: validate and store what the user typed ----------------------------------
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
        params = self._params(options)
        models = self.models.choose(options.model, message)
        if options.retrieval.enabled:
            checked_filter(options.retrieval.filter, ("body", "retrieval", "filter"))
        system = system_prompt or self.settings.system_prompt
        # Refuse a message that cannot fit before anything is stored.
        build_prompt(
            system=system,
            history=[],
            question=message,
            count_tokens=models[0].count_tokens,
            budget=models[0].context_window - params["max_tokens"],
        )
        if not persist:
            return ChatTurn(
                service=self,
                conversation_id=None,
                user_message_id=new_id(),
                assistant_message_id=new_id(),
                question=message,
                history=list(history or []),
                models=models,
                params=params,
                user=user,
                retrieval=options.retrieval,
                system_prompt=system,
                persist=False,
            )
        async with self.sessions() as session:
            if conversation_id is None:
                conversation = await repository.create_conversation(
                    session=session, user_id=user.id, title=_title(message)
                )
                branch: list[Message] = []
            else:
                found = await repository.get_conversation(
                    session=session, user_id=user.id, conversation_id=conversation_id
                )
                if found is None:
                    raise NotFound("conversation not found", field=("body", "conversation_id"))
                conversation = found
                stored = await repository.conversation_messages(
                    session=session, conversation_id=conversation.id
                )
                branch = repository.branch_ending_at(stored, stored[-1].id if stored else None)
            user_message = await repository.add_message(
                session=session,
                conversation=conversation,
                role="user",
                content=message,
                parent_id=branch[-1].id if branch else None,
                status="complete",
            )
            await session.commit()
        return ChatTurn(
            service=self,
            conversation_id=conversation.id,
            user_message_id=user_message.id,
            assistant_message_id=new_id(),
            question=message,
            history=(
                list(history)
                if history is not None
                else [(m.role, m.content) for m in branch if m.content]
            ),
            models=models,
            params=params,
            user=user,
            retrieval=options.retrieval,
            system_prompt=system,
        )

    async def regenerate(
        self, *, user: User, conversation_id: str, options: ChatOptions
    ) -> ChatTurn:
        """A new answer to the conversation's last question, beside the previous ones (the
        old answer stays, as a sibling branch)."""
        params = self._params(options)
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
        models = self.models.choose(options.model, question.content)
        if options.retrieval.enabled:
            checked_filter(options.retrieval.filter, ("body", "retrieval", "filter"))
        return ChatTurn(
            service=self,
            conversation_id=conversation.id,
            user_message_id=question.id,
            assistant_message_id=new_id(),
            question=question.content,
            history=[(m.role, m.content) for m in branch[: questions[-1]] if m.content],
            models=models,
            params=params,
            user=user,
            retrieval=options.retrieval,
            system_prompt=self.settings.system_prompt,
        )

    async def complete(self, turn: ChatTurn) -> Message:
        """Run the answer to its end and return it (as stored, when the turn persists)."""
        async for _event in turn.events():
            pass
        assert turn.result is not None
        return turn.result

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

    async def _retrieve(self, turn: ChatTurn, answer: _Answer) -> list[Passage]:
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
        self, turn: ChatTurn, passages: list[Passage], answer: _Answer
    ) -> tuple[ModelStream, BuiltPrompt] | None:
        """The first model that starts answering, trying the fallbacks in order."""
        failure: ModelFailure | None = None
        for model in turn.models:
            prompt = self._prompt(turn, model, passages)
            try:
                return await open_stream(model, prompt.messages, turn.params, self.policy), prompt
            except ModelFailure as exc:
                failure = exc
                log.warning("model %s unavailable: %s", model.name, exc)
                answer.model = model
                if not exc.fallback:
                    break
        assert failure is not None
        answer.fail(failure.code, failure.user_message())
        return None

    async def _answer(self, turn: ChatTurn) -> AsyncIterator[ChatEvent]:
        answer = _Answer(created_at=utcnow(), model=turn.models[0])
        try:
            passages = await self._retrieve(turn, answer)
            opened = None if answer.status == "error" else await self._open(turn, passages, answer)
        except (asyncio.CancelledError, GeneratorExit):
            await self._keep_interrupted(turn, answer)
            raise
        if opened is None:
            yield self._meta(turn, answer.model)
            await self._store_answer(turn, answer)
            yield ChatEvent("error", {"code": answer.error_code, "message": answer.error})
            return

        stream, prompt = opened
        answer.model = stream.handle
        answer.counted_prompt_tokens = prompt.prompt_tokens
        answer.sources = [p.as_source() for p in passages[: prompt.sources_used]]
        yield self._meta(turn, stream.handle)
        yield ChatEvent("sources", {"sources": answer.sources})
        try:
            async for chunk in stream.chunks():
                if chunk.usage_metadata:
                    answer.usage = {
                        "prompt_tokens": chunk.usage_metadata["input_tokens"],
                        "completion_tokens": chunk.usage_metadata["output_tokens"],
                    }
                answer.finish_reason = (
                    chunk.response_metadata.get("finish_reason") or answer.finish_reason
                )
                if text := chunk.text:
                    if answer.first_token_at is None:
                        answer.first_token_at = time.perf_counter()
                    answer.parts.append(text)
                    yield ChatEvent("token", {"text": text})
        except (asyncio.CancelledError, GeneratorExit):
            await self._keep_interrupted(turn, answer)
            raise
        except ModelFailure as exc:
            log.warning("model %s failed mid-answer: %s", stream.handle.name, exc)
            answer.fail(exc.code, exc.user_message())
        except Exception:
            log.exception("model %s failed mid-answer", stream.handle.name)
            answer.fail("model_error", "The model failed while answering; please try again.")

        stored = await self._store_answer(turn, answer)
        if answer.status == "error":
            yield ChatEvent("error", {"code": answer.error_code, "message": answer.error})
            return
        yield ChatEvent(
            "done",
            {
                "finish_reason": stored.finish_reason,
                "model": stream.handle.name,
                "usage": {
                    "prompt_tokens": stored.prompt_tokens,
                    "completion_tokens": stored.completion_tokens,
                },
                "timings": stored.timings,
            },
        )

    async def _keep_interrupted(self, turn: ChatTurn, answer: _Answer) -> None:
        """The client went away: keep what was said so far (shielded from the cancel)."""
        answer.status, answer.finish_reason = "interrupted", "cancelled"
        with anyio.CancelScope(shield=True):
            await self._store_answer(turn, answer)

    async def _store_answer(self, turn: ChatTurn, answer: _Answer) -> Message:
        content = "".join(answer.parts)
        usage = answer.usage or {
            "prompt_tokens": answer.counted_prompt_tokens,
            "completion_tokens": answer.model.count_tokens(content) if content else 0,
        }
        now = time.perf_counter()
        timings = {
            "retrieval_ms": round(answer.retrieval_ms, 2),
            "ttft_ms": _ms(answer.first_token_at - turn.started) if answer.first_token_at else None,
            "total_ms": _ms(now - turn.started),
        }
        fields: dict[str, Any] = {
            "status": answer.status,
            "model": answer.model.name,
            "finish_reason": answer.finish_reason or "stop",
            "error": answer.error,
            "timings": timings,
            "sources": answer.sources,
            **usage,
        }
        self._observe(turn, answer, usage["completion_tokens"] or 0)
        unsaved = Message(
            id=turn.assistant_message_id,
            role="assistant",
            content=content,
            parent_id=turn.user_message_id,
            created_at=answer.created_at,
            **fields,
        )
        turn.result = unsaved
        if not turn.persist:
            return unsaved
        async with self.sessions() as session:
            conversation = await session.get(Conversation, turn.conversation_id)
            if conversation is None:  # deleted while answering: nothing to attach it to
                log.info("conversation %s was deleted during its answer", turn.conversation_id)
                return unsaved
            message = await repository.add_message(
                session=session,
                conversation=conversation,
                role="assistant",
                content=content,
                parent_id=turn.user_message_id,
                message_id=turn.assistant_message_id,
                created_at=answer.created_at,
                **fields,
            )
            await session.commit()
            turn.result = message
            return message

    def _observe(self, turn: ChatTurn, answer: _Answer, tokens: int) -> None:
        name = answer.model.name
        self.metrics.answers.labels(name, answer.status).inc()
        if answer.error_code:
            self.metrics.errors.labels(answer.error_code).inc()
        if answer.first_token_at is not None:
            self.metrics.ttft.labels(name).observe(answer.first_token_at - turn.started)
            generating = time.perf_counter() - answer.first_token_at
            if tokens > 1 and generating > 0:
                self.metrics.tokens_per_second.labels(name).observe(tokens / generating)
        self.metrics.tokens.labels(name).inc(tokens)


@dataclass
class _Answer:
    """What has been produced of one answer so far."""

    created_at: datetime
    model: ChatModelHandle
    parts: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    counted_prompt_tokens: int = 0
    finish_reason: str | None = None
    first_token_at: float | None = None
    retrieval_ms: float = 0.0
    status: str = "complete"
    error: str | None = None
    error_code: str | None = None

    def fail(self, code: str, message: str) -> None:
        self.status, self.finish_reason = "error", "error"
        self.error_code, self.error = code, message


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _title_of(passage: Passage) -> str | None:
    title = passage.metadata.get("title") or passage.metadata.get("source")
    return str(title) if title else None


def _title(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
