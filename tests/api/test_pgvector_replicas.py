"""VECTOR_STORE=postgres end to end: two backends on one PostgreSQL with pgvector (history
and vectors in the same database) see each other's documents at once, and keep one set of
BM25 statistics while both ingest; a server without pgvector is refused with a clear error."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from backend.db import repository
from backend.db.engine import create_engine, session_factory
from backend.db.models import Document
from backend.retrieval.bm25 import CorpusDelta, CorpusStats
from backend.retrieval.postgres_store import PostgresVectorStore, VectorStoreUnavailable
from backend.services.components import build_components
from tests.helpers import LiveServer, Serve, ingest, make_settings, register

WORDS = ["asthma", "insulin", "fracture", "migraine", "anaemia", "sepsis", "glaucoma", "eczema"]


def _search(client: httpx.Client, headers: dict[str, str], query: str) -> list[dict]:
    response = client.post(
        "/search", json={"query": query, "alpha": 0, "top_k": 50}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.fixture
def replicas(serve: Serve, pgvector_url: str) -> tuple[LiveServer, LiveServer]:
    options = {"vector_store": "postgres", "bm25_refresh_seconds": 0, "chunk_size": 200}
    return (
        serve(database_url=pgvector_url, **options),
        serve(database_url=pgvector_url, **options),
    )


def test_a_document_ingested_on_one_replica_is_found_on_the_other_at_once(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    one, other = replicas
    headers = register(one.http)
    ingest(one.http, headers, {"id": "doc", "text": "Aquagenic urticaria in bathing infants."})
    [hit] = _search(other.http, headers, "urticaria")
    assert (hit["document_id"], hit["text"]) == ("doc", "Aquagenic urticaria in bathing infants.")
    assert one.components.store is not other.components.store
    # Deleted on the other: gone on the first.
    assert other.http.delete("/documents/doc", headers=headers).status_code == 204
    assert _search(one.http, headers, "urticaria") == []


def test_bm25_statistics_stay_one_under_concurrent_ingestion(
    replicas: tuple[LiveServer, LiveServer], pgvector_url: str
) -> None:
    one, other = replicas
    headers = register(one.http)
    errors: list[BaseException] = []

    def write(server: LiveServer, name: str) -> None:
        try:
            for i in range(6):
                words = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(i % 4 + 1))
                ingest(server.http, headers, {"id": f"{name}-{i}", "text": f"{words} {name}"})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, n)) for s, n in ((one, "a"), (other, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

    async def stored() -> tuple[CorpusStats, CorpusDelta]:
        engine = create_engine(pgvector_url)
        try:
            async with session_factory(engine)() as session:
                stats, _ = await repository.load_corpus_stats(session=session)
                documents = (await session.scalars(select(Document))).all()
        finally:
            await engine.dispose()
        total = CorpusDelta()
        for document in documents:
            part = CorpusDelta.from_json(document.bm25)
            total.doc_count += part.doc_count
            total.total_length += part.total_length
            for tid, count in part.doc_freq.items():
                total.doc_freq[tid] = total.doc_freq.get(tid, 0) + count
        return stats, total

    stats, total = asyncio.run(stored())
    assert (stats.doc_count, stats.total_length, stats.doc_freq) == (
        total.doc_count,
        total.total_length,
        total.doc_freq,
    )
    assert stats.doc_count == 12
    # Both replicas score alike: the same statistics, the same shared records.
    for word in WORDS[:4]:
        first = [(h["id"], round(h["score"], 6)) for h in _search(one.http, headers, word)]
        second = [(h["id"], round(h["score"], 6)) for h in _search(other.http, headers, word)]
        assert first, word
        assert first == second, word


async def test_a_postgresql_without_pgvector_is_refused_clearly(
    tmp_path: Path, postgres_url: str
) -> None:
    """The machine's PostgreSQL 15 has no pgvector: the service says so at start."""
    settings = make_settings(tmp_path, postgres_url, vector_store="postgres")
    with pytest.raises(VectorStoreUnavailable, match="has no pgvector extension"):
        await build_components(settings)
    with pytest.raises(
        VectorStoreUnavailable, match=r"cannot reach postgresql://nobody@127\.0\.0\.1:1"
    ):
        await PostgresVectorStore(
            f"postgresql://nobody@127.0.0.1:1/{uuid.uuid4().hex}", dimension=8
        ).open()


def test_postgres_needs_a_postgresql_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="VECTOR_STORE=postgres needs a PostgreSQL"):
        make_settings(tmp_path, f"sqlite:///{tmp_path}/x.db", vector_store="postgres")
