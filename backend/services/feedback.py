"""What users said about answers, exported for learning from it (admins only:
`GET /admin/feedback/export`, `python -m backend.cli export-feedback`).

Three kinds of record, one JSON object each:
- `rating`: a rated answer with its question, the thread before it, its sources, the
  rating (1 or -1) and the comment;
- `preference`: two answers to the same question, the one kept or 👍 (`chosen`) over the
  one replaced or 👎 (`rejected`), with why (`rating`, `revision`: the chosen was revised
  from the rejected after the `feedback`, or `regeneration`);
- `case`: a 👎 answer as an evaluation case (question, thread, sources, the bad answer and
  the comment) that `eval-answers --cases` runs again, so a fixed problem stays fixed.

Users appear as a pseudonym (a keyed hash of their id: stable across exports with the same
SECRET_KEY, not reversible without it) unless usernames are asked for."""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.common.errors import InvalidInput
from backend.db import repository
from backend.db.models import Conversation, Message, MessageStatus

KINDS = ("ratings", "preferences", "cases")
PAGE = 100  # conversations read at a time


@dataclass(frozen=True)
class ExportOptions:
    kinds: frozenset[str] = frozenset(KINDS)
    since: datetime | None = None
    usernames: bool = False  # real usernames instead of pseudonyms

    @classmethod
    def parse(cls, kinds: str, since: datetime | None, *, usernames: bool) -> ExportOptions:
        """From comma-separated `kinds`; InvalidInput naming an unknown one."""
        chosen = {k.strip() for k in kinds.split(",") if k.strip()}
        unknown = sorted(chosen - set(KINDS))
        if unknown or not chosen:
            problem = f"unknown kind {', '.join(map(repr, unknown))}" if unknown else "no kind"
            raise InvalidInput(f"{problem}; choose among {', '.join(KINDS)}", field=("kinds",))
        if since is not None and since.tzinfo is None:
            raise InvalidInput(
                "since needs a time zone, e.g. 2026-12-01T00:00:00Z", field=("since",)
            )
        return cls(kinds=frozenset(chosen), since=since, usernames=usernames)


def pseudonym(secret: str, user_id: str) -> str:
    return "user-" + hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:16]


@dataclass
class _Thread:
    """One conversation's messages, indexed for the records."""

    conversation: Conversation
    user: str
    by_id: dict[str, Message] = field(init=False)
    kept: set[str] = field(init=False)  # ids on the branch the user is on

    def __post_init__(self) -> None:
        messages = self.conversation.messages
        self.by_id = {m.id: m for m in messages}
        chosen = self.conversation.active_message_id
        self.kept = {m.id for m in repository.active_branch(messages, chosen)}

    def context(self, answer: Message) -> dict[str, Any]:
        """The question an answer answers and the thread before it."""
        question = self.by_id.get(answer.parent_id or "")
        before = (
            repository.branch_ending_at(self.conversation.messages, question.parent_id)
            if question is not None and question.parent_id
            else []
        )
        return {
            "conversation_id": self.conversation.id,
            "user": self.user,
            "question": question.content if question is not None else "",
            "history": [{"role": m.role, "content": m.content} for m in before],
        }


def _answer(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "text": message.content,
        "model": message.model,
        "sources": message.sources or [],
        "search_query": message.search_query,
        "created_at": message.created_at.isoformat(),
    }


def _rating(message: Message) -> int:
    return message.feedback.rating if message.feedback is not None else 0


def _recent(since: datetime | None, *moments: datetime | None) -> bool:
    return since is None or any(m is not None and m >= since for m in moments)


def ratings_and_cases(thread: _Thread, options: ExportOptions) -> Iterable[dict[str, Any]]:
    for message in thread.conversation.messages:
        feedback = message.feedback
        if feedback is None or not _recent(options.since, feedback.created_at):
            continue
        common = {
            **thread.context(message),
            "rating": feedback.rating,
            "comment": feedback.comment,
            "rated_at": feedback.created_at.isoformat(),
        }
        if "ratings" in options.kinds:
            yield {"type": "rating", **common, "answer": _answer(message)}
        if "cases" in options.kinds and feedback.rating < 0:
            yield {
                "type": "case",
                "id": message.id,
                **common,
                "sources": message.sources or [],
                "bad_answer": message.content,
                "model": message.model,
            }


def _revised_from(thread: _Thread, answer: Message, earlier: Message) -> str | None:
    """The feedback `earlier` was revised after, if `answer` comes from it by revisions."""
    current, seen = answer, set()
    while current.revision_of and current.id not in seen:
        seen.add(current.id)
        if current.revision_of == earlier.id:
            return current.revision_feedback or ""
        parent = thread.by_id.get(current.revision_of)
        if parent is None:
            return None
        current = parent
    return None


def preferences(thread: _Thread, options: ExportOptions) -> Iterable[dict[str, Any]]:
    """Pairs among the answers to one question: a 👍 one over one not 👍 (or a not-👎
    one over a 👎 one); between equally rated ones, the one on the user's branch over the
    ones it replaced (by revision or by regeneration)."""
    siblings: dict[str, list[Message]] = defaultdict(list)
    for m in thread.conversation.messages:
        if m.role == "assistant" and m.parent_id and m.status == MessageStatus.COMPLETE.value:
            siblings[m.parent_id].append(m)
    for answers in siblings.values():
        for chosen in answers:
            for rejected in answers:
                if chosen is rejected:
                    continue
                up, down = _rating(chosen), _rating(rejected)
                replaced = chosen.id in thread.kept and rejected.id not in thread.kept
                if not (up > down and (up > 0 or down < 0)) and not (up == down == 0 and replaced):
                    continue
                revised = _revised_from(thread, chosen, rejected)
                if up != down:
                    reason = "rating"
                else:
                    reason = "revision" if revised is not None else "regeneration"
                moments = [chosen.created_at, rejected.created_at] + [
                    m.feedback.created_at for m in (chosen, rejected) if m.feedback is not None
                ]
                if not _recent(options.since, *moments):
                    continue
                comment = rejected.feedback.comment if rejected.feedback is not None else None
                yield {
                    "type": "preference",
                    **thread.context(chosen),
                    "reason": reason,
                    "feedback": revised or comment,
                    "chosen": {**_answer(chosen), "rating": up},
                    "rejected": {**_answer(rejected), "rating": down},
                }


class FeedbackExport:
    """The records, conversation by conversation, a page of them in memory at a time."""

    def __init__(
        self, sessions: Callable[[], AsyncSession], secret: str, *, page: int = PAGE
    ) -> None:
        self.sessions = sessions
        self.secret = secret
        self.page = page

    async def records(self, options: ExportOptions) -> AsyncIterator[dict[str, Any]]:
        after: str | None = None
        while True:
            async with self.sessions() as session:
                page = await repository.conversations_with_feedback(
                    session=session, after=after, since=options.since, page=self.page
                )
                names = await self._names(session, page, options)
            for conversation in page:
                thread = _Thread(conversation, names[conversation.user_id])
                if {"ratings", "cases"} & options.kinds:
                    for record in ratings_and_cases(thread, options):
                        yield record
                if "preferences" in options.kinds:
                    for record in preferences(thread, options):
                        yield record
            if len(page) < self.page:
                return
            after = page[-1].id

    async def _names(
        self, session: AsyncSession, page: Sequence[Conversation], options: ExportOptions
    ) -> dict[str, str]:
        owners = sorted({c.user_id for c in page})
        if not options.usernames:
            return {user_id: pseudonym(self.secret, user_id) for user_id in owners}
        return await repository.usernames(session=session, user_ids=owners)
