"""ChatService and its pipeline alone: their collaborators (documents, an answer observer,
the database) are autospec'd mocks, so each test sees exactly what the pipeline asks of
them; the relay is the real one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from backend.common.errors import InvalidInput
from backend.db.answers import AnswerWrites
from backend.db.models import User
from backend.llm import ModelCatalog, UnknownModel
from backend.retrieval.passage import Passage
from backend.retrieval.retriever import SearchResult
from backend.services.answer import Answer, AnswerObserver
from backend.services.chat import ChatService
from backend.services.documents import DocumentService
from backend.services.events import AnswerEvent
from backend.services.limits import Limits
from backend.services.model_keys import UserModels
from backend.services.pipeline import AnswerPipeline
from backend.services.prompt import COMPACT_STOP
from backend.services.relay import Relay
from backend.services.turns import ChatOptions, ChatTurn, RetrievalOptions
from tests.helpers import RecordingFakeChatModel, fake_model, make_settings

USER = User(id="user-1", username="alice", password_hash="x", is_active=True)
PASSAGE = Passage("d1#r#0", "d1", "Lace plants shed cells.", 0.9, {"title": "Lace"})


class Pipeline:
    """A ChatService over mocks, and the mocks."""

    def __init__(self, tmp_path: Path, reply: str = "Hi [1].", **settings: Any) -> None:
        self.model = fake_model([reply])
        self.documents = create_autospec(DocumentService, instance=True)
        self.documents.search.return_value = SearchResult([PASSAGE])
        self.observer = create_autospec(AnswerObserver, instance=True)
        self.sessions = create_autospec(async_sessionmaker, instance=True)
        self.writes = create_autospec(AnswerWrites, instance=True)
        self.relay = Relay()
        config = make_settings(tmp_path, "sqlite://", **settings)
        self.service = ChatService(
            settings=config,
            sessions=self.sessions,
            models=ModelCatalog([self.model], settings=config),
            pipeline=AnswerPipeline(
                settings=config, documents=self.documents, observers=[self.observer]
            ),
            relay=self.relay,
            writes=self.writes,
            user_models=UserModels(
                settings=config.model_copy(update={"user_keys": "off"}),
                sessions=self.sessions,
                catalog=ModelCatalog([self.model], settings=config),
            ),
            limits=Limits(config),
        )

    async def turn(self, message: str = "Why?", **options: Any) -> ChatTurn:
        return await self.service.start(
            user=USER,
            message=message,
            conversation_id=None,
            options=ChatOptions(**options),
            persist=False,
        )

    async def events(self, message: str = "Why?", **options: Any) -> list[AnswerEvent]:
        turn = await self.turn(message, **options)
        return [event async for event in self.service.stream(turn)]

    def ended(self) -> Answer:
        """The answer the observer was told had ended (once)."""
        self.observer.ended.assert_awaited_once()
        return self.observer.ended.await_args.args[0]


async def test_an_answer_streams_then_is_stored_once(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    events = await pipeline.events()
    assert [e.name for e in events[:2]] == ["meta", "sources"]
    assert events[1].data()["sources"] == [PASSAGE.as_source()]
    assert "".join(e.text for e in events if e.name == "token") == "Hi [1]."
    assert events[-1].name == "done"
    answer = pipeline.ended()  # told once, before the reader saw the end
    assert (answer.text, answer.status, answer.sources) == (
        "Hi [1].",
        "complete",
        [PASSAGE.as_source()],
    )
    pipeline.observer.began.assert_called_once_with(answer)
    search = pipeline.documents.search.await_args.kwargs
    assert (search["user"], search["query"]) == (USER, "Why?")
    pipeline.sessions.assert_not_called()  # a turn that is not persisted touches no database
    pipeline.writes.question.assert_not_awaited()


async def test_retrieval_off_asks_the_documents_nothing(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    events = await pipeline.events(retrieval=RetrievalOptions(enabled=False))
    pipeline.documents.search.assert_not_awaited()
    assert events[1].data()["sources"] == []
    assert events[-1].name == "done"


async def test_a_failed_search_ends_in_an_error_without_asking_the_model(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    pipeline.documents.search.side_effect = ConnectionError("store down")
    events = await pipeline.events()
    assert [e.name for e in events] == ["meta", "error"]
    assert events[-1].data()["code"] == "retrieval_error"
    assert isinstance(pipeline.model.chat, RecordingFakeChatModel)
    assert pipeline.model.chat.prompts == []
    assert pipeline.ended().status == "error"


async def test_a_reader_leaving_keeps_the_answer_as_interrupted(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, reply="a long answer")
    pipeline.model.chat.sleep = 0.01  # type: ignore[attr-defined]  # one character at a time
    turn = await pipeline.turn()
    events = pipeline.service.stream(turn)
    seen = [await anext(events) for _ in range(4)]  # meta, sources, two tokens
    await events.aclose()
    assert [e.name for e in seen] == ["meta", "sources", "token", "token"]
    await asyncio.wait_for(pipeline.relay.close(), 5)
    answer = pipeline.ended()
    assert answer.status == "interrupted"
    assert answer.text.startswith("a ")
    assert len(answer.text) < len("a long answer")


async def test_requests_are_checked_before_anything_is_stored(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, max_tokens_default=50, max_tokens_limit=100)
    with pytest.raises(UnknownModel):
        await pipeline.events(model="no-such-model")
    with pytest.raises(InvalidInput) as too_many:
        await pipeline.events(max_tokens=101)
    assert too_many.value.field == ("max_tokens",)  # a domain field: the API says where
    pipeline.sessions.assert_not_called()
    pipeline.writes.question.assert_not_awaited()
    pipeline.observer.ended.assert_not_awaited()


async def test_a_compact_model_reads_a_compact_prompt_and_stops_at_a_new_turn(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path)
    chat = pipeline.model.chat
    assert isinstance(chat, RecordingFakeChatModel)
    await pipeline.events("Why?", stop=["END"])
    assert chat.stops[-1] == ["END"]  # the full prompt: the request's own stop alone
    assert "Lace plants shed cells." in chat.prompts[-1][0].text  # sources in the system
    pipeline.model.prompt = "compact"
    await pipeline.events("Why?", stop=["END"])
    assert chat.stops[-1] == ["END", *COMPACT_STOP]
    system, asked = chat.prompts[-1]
    assert "Lace plants" not in system.text
    assert asked.text.startswith("Sources:")
    assert "Question: Why?" in asked.text
    # A request may choose the layout (the evaluator compares them).
    await pipeline.events("Why?", prompt="full")
    assert "Lace plants shed cells." in chat.prompts[-1][0].text
