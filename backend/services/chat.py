"""The chat service: a turn started (`start`, `regenerate`: the request checked, the
question stored), run (`stream`, `complete`), followed again (`resume`) and stopped (`stop`).
Knows nothing of HTTP. The answer itself is written by the pipeline (`services/pipeline.py`)
into the turn's `Answer`, run in the relay (`services/relay.py`), which its readers follow."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.common.errors import Conflict, InvalidInput, NotFound, UpstreamFailed
from backend.common.settings import Settings
from backend.db import repository
from backend.db.answers import AnswerWrites
from backend.db.models import Conversation, Message, MessageStatus, User, new_id, utcnow
from backend.llm import ModelCatalog
from backend.llm.own_key import OwnKeyModel
from backend.retrieval.passage import Passage
from backend.services.answer import Answer
from backend.services.events import AnswerEvent
from backend.services.limits import Limits
from backend.services.model_keys import UserModels
from backend.services.pipeline import AnswerPipeline
from backend.services.prompt import check_fits, revision_messages
from backend.services.relay import Relay, follow_stored
from backend.services.turns import ChatOptions, ChatTurn, Revision

log = logging.getLogger(__name__)

TITLE_CHARS = 60
STILL_WRITING = "the answer is still being written; stop it or wait for its end"


class ChatService:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        models: ModelCatalog,
        pipeline: AnswerPipeline,
        relay: Relay,
        writes: AnswerWrites,
        user_models: UserModels,
        limits: Limits,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self.pipeline = pipeline
        self.relay = relay
        self.writes = writes
        self.user_models = user_models
        self.limits = limits

    # --- a turn: the request checked, the question stored ------------------------------
    def _params(self, options: ChatOptions) -> dict[str, Any]:
        max_tokens = options.max_tokens or self.settings.max_tokens_default
        if max_tokens > self.settings.max_tokens_limit:
            raise InvalidInput(
                f"max_tokens must be at most {self.settings.max_tokens_limit}",
                field=("max_tokens",),
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

    async def _turn(
        self,
        *,
        user: User,
        question: str,
        options: ChatOptions,
        history: Sequence[tuple[str, str]],
        system_prompt: str | None = None,
        conversation_id: str | None = None,
        question_id: str | None = None,
    ) -> ChatTurn:
        """The one place a turn is made: the request's options checked and resolved."""
        params = self._params(options)
        models = await self.user_models.choose(user, options.model, question)
        answer = Answer(
            message_id=new_id(),
            user_id=user.id,
            conversation_id=conversation_id,
            parent_id=question_id or new_id(),
            model=models[0].name,
            instance=self.settings.instance_name,
            own_key=isinstance(models[0], OwnKeyModel),
        )
        return ChatTurn(
            question=question,
            history=list(history),
            models=models,
            params=params,
            user=user,
            retrieval=options.retrieval,
            system_prompt=system_prompt or self.settings.system_prompt,
            on_disconnect=options.on_disconnect or self.settings.stream_disconnect,
            answer=answer,
            prompt=options.prompt,
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
        self._check_length(message)
        turn = await self._turn(
            user=user,
            question=message,
            options=options,
            history=history or [],
            system_prompt=system_prompt,
        )
        await self._admit(turn)
        if persist:
            branch = await self._branch(user, conversation_id)
            if history is None:
                turn.history = [(m.role, m.content) for m in branch if m.content]
            await self._store_question(turn, conversation_id, branch)
        return turn

    def _check_length(self, message: str) -> None:
        if len(message) > self.settings.max_message_chars:
            raise InvalidInput(
                f"message is {len(message)} characters long; the limit is "
                f"{self.settings.max_message_chars}",
                field=("message",),
            )

    async def _admit(self, turn: ChatTurn) -> None:
        """Refuse a turn that cannot be answered now, before anything is stored: the model's
        waiting line full (503), a question that cannot fit its context window (422)."""
        model = turn.models[0]
        await self._within_quota(turn)
        await model.admit()
        last = turn.revisions[-1] if turn.revisions else None
        check_fits(
            system=turn.system_prompt,
            question=turn.question,
            count_tokens=model.count_tokens,
            budget=model.context_window - turn.params["max_tokens"],
            revision=revision_messages(last.answer, last.feedback) if last else (),
        )

    async def _branch(self, user: User, conversation_id: str | None) -> list[Message]:
        """The conversation's current thread, oldest first (none for a new conversation);
        404 if it is not the user's."""
        if conversation_id is None:
            return []
        async with self.sessions() as session:
            conversation, stored = await owned_conversation(session, user, conversation_id)
        return repository.active_branch(stored, conversation.active_message_id)

    async def _store_question(
        self, turn: ChatTurn, conversation_id: str | None, branch: list[Message]
    ) -> None:
        answer = turn.answer
        answer.conversation_id = conversation_id or new_id()
        await self.writes.question(
            user_id=turn.user.id,
            conversation_id=answer.conversation_id,
            message_id=str(answer.parent_id),
            parent_id=branch[-1].id if branch else None,
            text=turn.question,
            title=_title(turn.question) if conversation_id is None else None,
        )
        # The answer's clock starts with its question stored (and it sorts after it).
        answer.started, answer.created_at = time.perf_counter(), utcnow()

    async def regenerate(
        self, *, user: User, conversation_id: str, options: ChatOptions
    ) -> ChatTurn:
        """A new answer to the current thread's last question, beside the previous ones
        (the old answer stays, as a sibling branch)."""
        branch = await self._branch(user, conversation_id)
        questions = [m for m in branch if m.role == "user"]
        if not questions:
            raise InvalidInput(
                "the conversation has no question to answer again",
                field=("conversation_id",),
            )
        turn = await self._answer_again(user, branch, questions[-1], options)
        await self._within_quota(turn)
        await turn.models[0].admit()
        return turn

    async def _within_quota(self, turn: ChatTurn) -> None:
        """Refuse an answer on the operator's models once the user spent the day's tokens
        (an answer on their own key spends none)."""
        if not turn.answer.own_key:
            await self.limits.tokens_left(turn.user)

    async def _answer_again(
        self, user: User, branch: Sequence[Message], question: Message, options: ChatOptions
    ) -> ChatTurn:
        """A turn that answers the stored `question` of `branch` again."""
        before = branch[: branch.index(question)]
        return await self._turn(
            user=user,
            question=question.content,
            options=options,
            history=[(m.role, m.content) for m in before if m.content],
            conversation_id=question.conversation_id,
            question_id=question.id,
        )

    async def revise(
        self, *, user: User, message_id: str, feedback: str, options: ChatOptions
    ) -> ChatTurn:
        """A new answer written from the answer `message_id` and the user's `feedback` on
        it: a sibling of it, from the same sources. A revision of a revision carries the
        whole chain of answers and feedback (the prompt keeps the latest, and the earlier
        ones as fit)."""
        live = self.relay.find(message_id, user.id)  # kept a while after its end, too
        if live is not None and not live.ended:  # its row may not be written yet
            raise Conflict(STILL_WRITING, field=("message_id",))
        revised, stored = await self._owned_message(user, message_id)
        if revised.role != "assistant":
            raise InvalidInput("only answers can be revised", field=("message_id",))
        if revised.status == MessageStatus.STREAMING:  # by another worker or replica
            raise Conflict(STILL_WRITING, field=("message_id",))
        branch = repository.branch_ending_at(stored, revised.id)
        if len(branch) < 2 or branch[-2].role != "user":
            raise InvalidInput("the answer has no question to revise it for", field=("message_id",))
        turn = await self._answer_again(user, branch, branch[-2], options)
        turn.revisions = revision_chain(stored, revised, feedback)
        turn.passages = [Passage.from_source(s) for s in revised.sources or []]
        answer = turn.answer
        answer.search_query, answer.revision_of = revised.search_query, revised.id
        answer.revision_feedback = feedback
        await self._admit(turn)
        return turn

    async def edit(
        self, *, user: User, message_id: str, message: str, options: ChatOptions
    ) -> ChatTurn:
        """The question `message_id` asked again as `message`: a new question beside it (a
        sibling branch from the same point; the old branch stays) and its answer."""
        edited, stored = await self._owned_message(user, message_id)
        if edited.role != "user":
            raise InvalidInput("only questions can be edited", field=("message_id",))
        self._check_length(message)
        before = repository.branch_ending_at(stored, edited.parent_id)
        turn = await self._turn(
            user=user,
            question=message,
            options=options,
            history=[(m.role, m.content) for m in before if m.content],
        )
        await self._admit(turn)
        await self._store_question(turn, edited.conversation_id, before)
        return turn

    async def choose_branch(
        self, *, user: User, conversation_id: str, message_id: str
    ) -> list[Message]:
        """Make the thread of `message_id` (down to its newest reply) the conversation's
        current one, which the next question continues; returns it."""
        async with self.sessions() as session:
            conversation, stored = await owned_conversation(session, user, conversation_id)
            if message_id not in {m.id for m in stored}:
                raise NotFound("no such message in this conversation", field=("message_id",))
            conversation.active_message_id = message_id
            await session.commit()
        return repository.active_branch(stored, message_id)

    async def _owned_message(
        self, user: User, message_id: str
    ) -> tuple[Message, Sequence[Message]]:
        """The user's message `message_id` and every message of its conversation; 404 if
        it is not the user's."""
        async with self.sessions() as session:
            message = await repository.get_owned_message(
                session=session, user_id=user.id, message_id=message_id
            )
            if message is None:
                raise NotFound("message not found", field=("message_id",))
            stored = await repository.conversation_messages(
                session=session, conversation_id=message.conversation_id
            )
        return message, stored

    # --- its answer, run and followed ------------------------------------------------------
    def stream(self, turn: ChatTurn) -> AsyncGenerator[AnswerEvent, None]:
        """Generate the turn's answer in the relay; its events, for this reader."""
        self.relay.start(turn.answer, self.pipeline.run(turn), on_disconnect=turn.on_disconnect)
        return self.relay.follow(turn.answer)

    async def complete(self, turn: ChatTurn) -> Answer:
        """Run the answer to its end in the relay (counted and stoppable like a stream) and
        return it: a stopped one as `interrupted`; one that failed raises UpstreamFailed with
        its error's code."""
        answer = await self.relay.complete(turn.answer, self.pipeline.run(turn))
        if answer.status == MessageStatus.ERROR:
            raise UpstreamFailed(answer.error or "the answer failed", code=answer.error_code)
        return answer

    async def resume(
        self, *, user: User, message_id: str, after: int
    ) -> AsyncGenerator[AnswerEvent, None]:
        """An answer's events after character `after`: live from this process, else from
        its row (which another worker or replica may still be writing)."""
        if (live := self.relay.find(message_id, user.id)) is not None:
            return self.relay.follow(live, after)
        async with self.sessions() as session:
            await owned_answer(session, user, message_id, only_answers="have a stream")
        return follow_stored(
            self.sessions,
            message_id=message_id,
            user_id=user.id,
            after=after,
            poll_seconds=self.settings.stream_save_seconds or 0.5,
        )

    async def stop(self, *, user: User, message_id: str) -> str:
        """Stop an answer being generated; its text so far is kept as `interrupted`. One that
        another worker or replica generates is stopped by it within STREAM_SAVE_SECONDS.
        Returns `stopping`, or the status of an answer that had ended."""
        if self.relay.find(message_id, user.id) is not None:
            self.relay.stop(message_id)
            return "stopping"
        async with self.sessions() as session:
            message = await owned_answer(session, user, message_id, only_answers="can be stopped")
            if message.status == MessageStatus.STREAMING:
                if await repository.request_stop(session=session, message=message):
                    await session.commit()
                    return "stopping"
                await session.refresh(message)  # it ended meanwhile
        return message.status


async def owned_conversation(
    session: AsyncSession, user: User, conversation_id: str
) -> tuple[Conversation, Sequence[Message]]:
    """The user's conversation and its messages, oldest first; 404 if it is not theirs."""
    conversation = await repository.get_conversation(
        session=session, user_id=user.id, conversation_id=conversation_id
    )
    if conversation is None:
        raise NotFound("conversation not found", field=("conversation_id",))
    stored = await repository.conversation_messages(
        session=session, conversation_id=conversation_id
    )
    return conversation, stored


async def owned_answer(
    session: AsyncSession, user: User, message_id: str, *, only_answers: str
) -> Message:
    """The user's answer `message_id`: NotFound if it is not the user's, InvalidInput if it
    is a question (`only_answers` says what only answers may be or do)."""
    message = await repository.get_owned_message(
        session=session, user_id=user.id, message_id=message_id
    )
    if message is None:
        raise NotFound("message not found", field=("message_id",))
    if message.role != "assistant":
        raise InvalidInput(f"only answers {only_answers}", field=("message_id",))
    return message


def revision_chain(stored: Sequence[Message], revised: Message, feedback: str) -> list[Revision]:
    """The answers that led to `revised` by revision, oldest first, each with the feedback
    that was given on it; `revised` last, with the new `feedback`."""
    by_id = {m.id: m for m in stored}
    chain: list[Revision] = [Revision(revised.content, feedback)]
    current, seen = revised, {revised.id}
    while current.revision_of in by_id and current.revision_of not in seen:
        earlier = by_id[current.revision_of]
        chain.append(Revision(earlier.content, current.revision_feedback or ""))
        seen.add(earlier.id)
        current = earlier
    chain.reverse()
    return chain


def _title(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
