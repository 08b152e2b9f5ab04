"""The events of an answer, one type each, as the SSE protocol names them. Every reader of
an answer (the SSE stream, OpenAI's chunks, a resumed stream) is built from these: `name`
is the SSE `event:` field and `data()` its JSON. A message's status is
`backend.db.models.MessageStatus`.

An answer's events come in this order: `status` while it waits for a busy model (its
position, each time it moves up), `meta` once a model has started answering (or the
answer failed before any did), `sources` (when a model started), `token`..., and then
`done` or `error`. `token` events and the last one carry `id`: how many characters of
the answer precede the event's end (what `Last-Event-ID` resumes from)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal


@dataclass(slots=True)
class Status:
    """The answer waits for a busy model: `position` 1 is next."""

    name: ClassVar[Literal["status"]] = "status"
    position: int
    id: None = None

    def data(self) -> dict[str, Any]:
        return {"state": "queued", "position": self.position}


@dataclass(slots=True)
class Meta:
    """Which conversation, messages and model the answer is."""

    name: ClassVar[Literal["meta"]] = "meta"
    conversation_id: str | None
    user_message_id: str | None
    assistant_message_id: str
    model: str | None
    instance: str | None
    id: None = None

    def data(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "user_message_id": self.user_message_id,
            "assistant_message_id": self.assistant_message_id,
            "model": self.model,
            "instance": self.instance,
        }


@dataclass(slots=True)
class Sources:
    """The passages the prompt holds, numbered as cited (may be empty), and what they were
    searched for (`query`: the question, a follow-up's standalone query; None: no search)."""

    name: ClassVar[Literal["sources"]] = "sources"
    sources: list[dict[str, Any]]
    query: str | None = None
    id: None = None

    def data(self) -> dict[str, Any]:
        return {"sources": self.sources, "query": self.query}


@dataclass(slots=True)
class Token:
    """A piece of the answer's text (never the text so far)."""

    name: ClassVar[Literal["token"]] = "token"
    text: str
    id: int | None = None

    def data(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(slots=True)
class Done:
    """The answer is complete (and stored)."""

    name: ClassVar[Literal["done"]] = "done"
    finish_reason: str | None
    model: str | None
    usage: dict[str, int | None]
    timings: dict[str, Any] | None
    id: int | None = None

    def data(self) -> dict[str, Any]:
        return {
            "finish_reason": self.finish_reason,
            "model": self.model,
            "usage": self.usage,
            "timings": self.timings,
        }


@dataclass(slots=True)
class Error:
    """The answer ended without completing: `code` says why, `message` for people."""

    name: ClassVar[Literal["error"]] = "error"
    code: str
    message: str
    id: int | None = None

    def data(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


AnswerEvent = Status | Meta | Sources | Token | Done | Error
LastEvent = Done | Error
