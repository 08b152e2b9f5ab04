"""Ingestion in batches, the next embedded while one is stored: the same result as one
request after another, and documents that changed in between are looked at again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.db import repository
from backend.db.engine import session_factory
from backend.db.models import User
from backend.services.components import build_documents, open_database
from backend.services.documents import DocumentService
from backend.services.ingestion import NewDocument
from tests.helpers import fake_embeddings, make_settings


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[DocumentService, User]]:
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    engine = await open_database(settings)
    sessions = session_factory(engine)
    async with sessions() as session:
        user = await repository.create_user(session=session, username="ada", password_hash="-")
        await session.commit()
    documents = await build_documents(settings, sessions, embeddings=fake_embeddings())
    yield documents, user
    await documents.store.close()
    await engine.dispose()


def _doc(id_: str, text: str) -> NewDocument:
    return NewDocument(id=id_, text=text, metadata={"title": f"About {id_}"})


BATCHES = [
    [_doc("a", "Glaciers retreat. " * 80), _doc("b", "Coral reefs bleach.")],
    [_doc("a", "Glaciers advance. " * 60), _doc("c", "Forests burn.")],  # a replaced
    [_doc("a", "Glaciers advance. " * 60)],  # as stored: unchanged
]


async def test_batches_end_as_one_request_after_another(
    service: tuple[DocumentService, User], tmp_path: Path
) -> None:
    documents, user = service
    statuses = [
        [(r.id, r.status) for r in results]
        async for results in documents.ingest_batches(user=user, batches=BATCHES)
    ]
    assert statuses == [
        [("a", "created"), ("b", "created")],
        [("a", "updated"), ("c", "created")],
        [("a", "unchanged")],
    ]
    pipelined = documents.encoder.stats
    listed, total = await documents.list(user=user, limit=10, offset=0)
    assert total == 3

    # The same batches as separate requests, on a second service.
    settings = make_settings(tmp_path / "2", f"sqlite+aiosqlite:///{tmp_path / 'two.sqlite3'}")
    engine = await open_database(settings)
    sessions = session_factory(engine)
    async with sessions() as session:
        other = await repository.create_user(session=session, username="bo", password_hash="-")
        await session.commit()
    sequential = await build_documents(settings, sessions, embeddings=fake_embeddings())
    for batch in BATCHES:
        await sequential.ingest(user=other, documents=batch)
    assert sequential.encoder.stats == pipelined
    again, _ = await sequential.list(user=other, limit=10, offset=0)
    assert [(d.id, d.revision, d.chunk_count, d.bm25) for d in again] == [
        (d.id, d.revision, d.chunk_count, d.bm25) for d in listed
    ]
    await sequential.store.close()
    await engine.dispose()


async def test_two_requests_for_one_new_document_store_it_once(
    service: tuple[DocumentService, User],
) -> None:
    documents, user = service
    doc = _doc("same", "Lace plants shed cells through programmed death.")
    first, second = await asyncio.gather(
        documents.ingest(user=user, documents=[doc]), documents.ingest(user=user, documents=[doc])
    )
    assert sorted([first[0].status, second[0].status]) == ["created", "unchanged"]
    listed, total = await documents.list(user=user, limit=10, offset=0)
    assert total == 1
    assert await documents.store.count(namespace=f"user-{user.id}") == listed[0].chunk_count
