"""ChatService alone: its collaborators (documents, answer recorder, database) are
autospec'd mocks, so each test sees exactly what the pipeline asks of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from backend.common.errors import InvalidInput
from backend.db.models import Message, User
from backend.llm import ModelCatalog, UnknownModel
from backend.retrieval.retriever import Passage, SearchResult
from backend.services.answers import Answer, AnswerRecorder
from backend.services.chat import ChatService
from backend.services.documents import DocumentService
from backend.services.turns import ChatEvent, ChatOptions, RetrievalOptions
from tests.helpers import RecordingFakeChatModel, fake_model, make_settings

USER = User(id="user-1", username="alice", password_hash="x", is_active=True)
PASSAGE = Passage("d1#r#0", "d1", "Lace plants shed cells.", 0.9, {"title": "Lace"})


class Pipeline:
    """A ChatService over mocks, and the mocks."""

    def __init__(self, tmp_path: Path, reply: str = "Hi [1].", **settings: Any) -> None:
        self.model = fake_model([reply])
        self.documents = create_autospec(DocumentService, instance=True)
        self.documents.search.return_value = SearchResult([PASSAGE])
        self.recorder = create_autospec(AnswerRecorder, instance=True)
        self.recorder.finish.side_effect = self._stored
        self.recorder.interrupted.side_effect = self._interrupted
        self.sessions = create_autospec(async_sessionmaker, instance=True)
        config = make_settings(tmp_path, "sqlite://", **settings)
        self.service = ChatService(
            settings=config,
            sessions=self.sessions,
            models=ModelCatalog([self.model], settings=config),
            documents=self.documents,
            recorder=self.recorder,
        )

    @staticmethod
    async def _stored(answer: Answer) -> Message:
        usage = answer.final_usage()
        return Message(
            id=answer.message_id,
            role="assistant",
            content=answer.text,
            status=answer.status,
            model=answer.model.name,
            finish_reason=answer.finish_reason or "stop",
            timings=answer.timings(),
            **usage,
        )

    async def _interrupted(self, answer: Answer) -> Message:
        answer.interrupt()
        return await self._stored(answer)

    async def events(self, message: str = "Why?", **options: Any) -> list[ChatEvent]:
        turn = await self.service.start(
            user=USER,
            message=message,
            conversation_id=None,
            options=ChatOptions(**options),
            persist=False,
        )
        return [event async for event in self.service.answer(turn)]


async def test_an_answer_streams_then_is_stored_once(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    events = await pipeline.events()
    assert [e.event for e in events[:2]] == ["meta", "sources"]
    assert events[1].data["sources"] == [PASSAGE.as_source()]
    assert "".join(e.data["text"] for e in events if e.event == "token") == "Hi [1]."
    assert events[-1].event == "done"
    assert events[-1].stored is not None
    assert all(e.stored is None for e in events[:-1])  # only the last event carries it
    pipeline.recorder.finish.assert_awaited_once()
    answer = pipeline.recorder.finish.await_args.args[0]
    assert (answer.text, answer.status, answer.sources) == (
        "Hi [1].",
        "complete",
        [PASSAGE.as_source()],
    )
    pipeline.recorder.interrupted.assert_not_awaited()
    search = pipeline.documents.search.await_args.kwargs
    assert (search["user"], search["query"]) == (USER, "Why?")
    pipeline.sessions.assert_not_called()  # a turn that is not persisted touches no database


async def test_retrieval_off_asks_the_documents_nothing(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    events = await pipeline.events(retrieval=RetrievalOptions(enabled=False))
    pipeline.documents.search.assert_not_awaited()
    assert events[1].data["sources"] == []
    assert events[-1].event == "done"


async def test_a_failed_search_ends_in_an_error_without_asking_the_model(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    pipeline.documents.search.side_effect = ConnectionError("store down")
    events = await pipeline.events()
    assert [e.event for e in events] == ["meta", "error"]
    assert events[-1].data["code"] == "retrieval_error"
    assert isinstance(pipeline.model.chat, RecordingFakeChatModel)
    assert pipeline.model.chat.prompts == []
    assert pipeline.recorder.finish.await_args.args[0].status == "error"


async def test_a_reader_leaving_keeps_the_answer_as_interrupted(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, reply="a long answer")
    turn = await pipeline.service.start(
        user=USER, message="Why?", conversation_id=None, options=ChatOptions(), persist=False
    )
    events = pipeline.service.answer(turn)
    seen = [await anext(events) for _ in range(4)]  # meta, sources, two tokens
    await events.aclose()
    assert [e.event for e in seen] == ["meta", "sources", "token", "token"]
    pipeline.recorder.interrupted.assert_awaited_once()
    pipeline.recorder.finish.assert_not_awaited()
    answer = pipeline.recorder.interrupted.await_args.args[0]
    assert (answer.status, answer.text) == ("interrupted", "a ")


async def test_requests_are_checked_before_anything_is_stored(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, max_tokens_default=50, max_tokens_limit=100)
    with pytest.raises(UnknownModel):
        await pipeline.events(model="no-such-model")
    with pytest.raises(InvalidInput) as too_many:
        await pipeline.events(max_tokens=101)
    assert too_many.value.field == ("body", "max_tokens")
    with pytest.raises(InvalidInput) as bad_filter:
        await pipeline.events(retrieval=RetrievalOptions(filter={"year": {"$gt": "x"}}))
    assert bad_filter.value.field == ("body", "retrieval", "filter")
    pipeline.sessions.assert_not_called()
    pipeline.recorder.finish.assert_not_awaited()
