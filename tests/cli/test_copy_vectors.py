"""copy-vectors: the embedded store into pgvector and back, vectors as stored (the same
rankings and scores on both sides, nothing re-embedded), refused when dimensions differ."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backend.cli.commands import main
from backend.retrieval.bm25 import SparseVector
from backend.retrieval.embedded import EmbeddedVectorStore
from backend.retrieval.postgres_store import PostgresVectorStore
from backend.retrieval.store import Match, VectorStore
from tests.retrieval.test_stores import DIM, corpus


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("ENVIRONMENT", "development")


async def _fill(path: Path) -> None:
    store = EmbeddedVectorStore(path, dimension=DIM)
    records = corpus(2500, seed=5)  # more than one batch
    await store.upsert(records[:2000], namespace="shared")
    await store.upsert(records[2000:], namespace="user-1")
    await store.close()


async def _ranking(store: VectorStore, namespace: str) -> list[Match]:
    query = corpus(1, seed=9)[0].values
    sparse = SparseVector([3, 7, 11], [1.0, 0.5, 2.0])
    return await store.query(
        namespace=namespace, vector=query, sparse=sparse, top_k=20, filter_={"year": {"$lt": 2007}}
    )


def _rounded(matches: list[Match]) -> list[tuple[str, float]]:
    return [(m.id, round(m.score, 5)) for m in matches]


def test_embedded_to_postgres_and_back(tmp_path: Path, pgvector_url: str) -> None:
    source = tmp_path / "source.sqlite3"
    back = tmp_path / "back.sqlite3"
    asyncio.run(_fill(source))
    args = ["--embedded", str(source), "--postgres", pgvector_url, "--quiet"]
    assert main(["copy-vectors", "embedded", "postgres", *args]) == 0
    assert main(["copy-vectors", "embedded", "postgres", *args]) == 0  # again: replaced
    args = ["--embedded", str(back), "--postgres", pgvector_url, "--quiet"]
    assert main(["copy-vectors", "postgres", "embedded", *args]) == 0

    async def compare() -> None:
        stores: list[VectorStore] = [
            EmbeddedVectorStore(source, dimension=DIM),
            await PostgresVectorStore(pgvector_url, dimension=DIM).open(),
            EmbeddedVectorStore(back, dimension=DIM),
        ]
        try:
            for namespace, size in (("shared", 2000), ("user-1", 500)):
                counts = [await s.count(namespace=namespace) for s in stores]
                assert counts == [size] * 3
                rankings = [_rounded(await _ranking(s, namespace)) for s in stores]
                assert rankings[0] == rankings[1] == rankings[2]
                first = [m.metadata for m in await _ranking(stores[0], namespace)]
                assert first == [m.metadata for m in await _ranking(stores[2], namespace)]
        finally:
            for store in stores:
                await store.close()

    asyncio.run(compare())


def test_different_dimensions_are_refused(
    tmp_path: Path, pgvector_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.sqlite3"
    asyncio.run(_fill(source))

    async def other_model() -> None:
        store = await PostgresVectorStore(pgvector_url, dimension=16).open()
        await store.close()

    asyncio.run(other_model())
    args = ["--embedded", str(source), "--postgres", pgvector_url, "--quiet"]
    assert main(["copy-vectors", "embedded", "postgres", *args]) == 2
    error = capsys.readouterr().err
    assert "the dimensions differ: the embedded store holds 8-d vectors" in error
    assert "postgres store 16-d" in error
    empty = ["--embedded", str(tmp_path / "none.sqlite3"), "--postgres", pgvector_url]
    assert main(["copy-vectors", "embedded", "postgres", *empty]) == 2
    assert "holds no vectors to copy" in capsys.readouterr().err
