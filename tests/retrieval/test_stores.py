"""One suite, every vector store: the embedded store (in memory and on disk), the Pinecone
adapter on the real SDK against a loopback Pinecone data-plane server, and the pgvector
store on a real PostgreSQL with pgvector (with its exact scan, and with its HNSW path)."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.retrieval.bm25 import SparseVector
from backend.retrieval.embedded import EmbeddedVectorStore
from backend.retrieval.filters import FilterError, matches
from backend.retrieval.pinecone_store import PineconeVectorStore, batches
from backend.retrieval.postgres_store import PostgresVectorStore
from backend.retrieval.store import Record, VectorStore
from tests.helpers import live_server
from tests.pinecone_server import pinecone_app, reference_scores

DIM = 8


def corpus(n: int = 60, seed: int = 7) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        values = np.array([rng.gauss(0, 1) for _ in range(DIM)])
        values = (values / np.linalg.norm(values)).tolist()
        tokens = sorted(rng.sample(range(1, 40), rng.randint(0, 5)))
        sparse = (
            SparseVector(tokens, [round(rng.uniform(0.1, 2.0), 3) for _ in tokens])
            if tokens
            else None
        )
        metadata = {
            "year": 2000 + i % 10,
            "section": rng.choice(["BACKGROUND", "METHODS", "RESULTS"]),
            "tags": rng.sample(["a", "b", "c"], rng.randint(0, 2)),
            "text": f"passage {i}",
        }
        records.append(Record(f"doc{i // 3}#r#{i % 3}", values, sparse, metadata))
    return records


def brute_force(records: list[Record], vector, sparse, top_k, filter_=None) -> list[str]:
    return [i for i, _ in reference_scores(records, vector, sparse, filter_)[:top_k]]


class StoreContract:
    """Behaviour every VectorStore must have; subclasses provide the `store` fixture."""

    async def test_dense_sparse_and_hybrid_rankings_are_exact(self, store: VectorStore) -> None:
        records = corpus()
        await store.upsert(records, namespace="ns")
        rng = random.Random(1)
        for _ in range(10):
            vector = [rng.gauss(0, 1) for _ in range(DIM)]
            sparse = SparseVector([3, 7, 11, 20], [1.0, 0.5, 2.0, 0.25])
            for v, s in ((vector, None), (None, sparse), (vector, sparse)):
                got = await store.query(namespace="ns", vector=v, sparse=s, top_k=10)
                want = brute_force(records, v, s, 10)
                if s is not None and v is None:
                    # Records with no matching term tie at 0; compare those that score.
                    scoring = [m.id for m in got if m.score > 0]
                    assert scoring == want[: len(scoring)]
                else:
                    assert [m.id for m in got] == want
                assert all(a.score >= b.score for a, b in itertools.pairwise(got))

    async def test_filters_are_honoured_exactly(self, store: VectorStore) -> None:
        records = corpus()
        await store.upsert(records, namespace="ns")
        vector = records[0].values
        filters: list[dict[str, Any]] = [
            {"year": {"$gte": 2005}},
            {"section": "RESULTS", "tags": "a"},
            {"$or": [{"year": 2001}, {"tags": {"$in": ["c"]}}]},
            {"tags": {"$nin": ["a", "b"]}},
            {"year": {"$gt": 3000}},
        ]
        for filter_ in filters:
            got = await store.query(
                namespace="ns", vector=vector, sparse=None, top_k=100, filter_=filter_
            )
            assert [m.id for m in got] == brute_force(records, vector, None, 100, filter_), filter_
            assert all(matches(filter_, m.metadata) for m in got)

    async def test_namespaces_are_apart(self, store: VectorStore) -> None:
        records = corpus(9)
        await store.upsert(records[:5], namespace="alice")
        await store.upsert(records[5:], namespace="bob")
        hits = await store.query(namespace="alice", vector=records[6].values, sparse=None, top_k=50)
        assert {m.id for m in hits} == {r.id for r in records[:5]}
        assert await store.count(namespace="bob") == 4
        assert (
            await store.query(namespace="nobody", vector=records[0].values, sparse=None, top_k=5)
            == []
        )

    async def test_upsert_replaces_delete_removes_and_list_finds_by_prefix(
        self, store: VectorStore
    ) -> None:
        records = corpus(9)
        await store.upsert(records, namespace="ns")
        replaced = Record(records[0].id, records[8].values, None, {"year": 1999, "text": "new"})
        await store.upsert([replaced], namespace="ns")
        assert await store.count(namespace="ns") == 9
        top = await store.query(
            namespace="ns", vector=records[8].values, sparse=None, top_k=2, filter_={"year": 1999}
        )
        assert [(m.id, m.metadata["text"]) for m in top] == [(records[0].id, "new")]

        assert await store.list_ids(prefix="doc1#", namespace="ns") == [
            "doc1#r#0",
            "doc1#r#1",
            "doc1#r#2",
        ]
        await store.delete(["doc1#r#0", "doc1#r#1", "doc1#r#2", "never-there"], namespace="ns")
        assert await store.list_ids(prefix="doc1#", namespace="ns") == []
        assert await store.count(namespace="ns") == 6
        hits = await store.query(namespace="ns", vector=records[4].values, sparse=None, top_k=50)
        assert not {m.id for m in hits} & {"doc1#r#0", "doc1#r#1", "doc1#r#2"}

    async def test_metadata_round_trips(self, store: VectorStore) -> None:
        record = Record(
            "m#1",
            corpus(1)[0].values,
            None,
            {"title": "Ünïcode ✓", "n": 3, "f": 0.5, "b": True, "l": ["x", "y"]},
        )
        await store.upsert([record], namespace="ns")
        [hit] = await store.query(namespace="ns", vector=record.values, sparse=None, top_k=1)
        assert hit.metadata == record.metadata  # numbers may come back as floats: 3 == 3.0


class TestEmbeddedInMemory(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[VectorStore]:
        store = EmbeddedVectorStore(None, dimension=DIM)
        yield store
        await store.close()

    async def test_an_unknown_operator_is_refused_not_guessed(self, store: VectorStore) -> None:
        """Filters are checked where requests enter; a caller that skips the check gets an
        error, never `$lte` in disguise."""
        records = corpus()
        await store.upsert(records, namespace="ns")
        with pytest.raises(FilterError, match=r"filter\.year: unknown operator '\$lt_e'"):
            await store.query(
                namespace="ns",
                vector=records[0].values,
                sparse=None,
                top_k=5,
                filter_={"year": {"$lt_e": 1}},
            )


class TestEmbeddedOnDisk(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[VectorStore]:
        store = EmbeddedVectorStore(tmp_path / "vectors.sqlite3", dimension=DIM)
        yield store
        await store.close()

    async def test_everything_survives_a_restart(self, tmp_path: Path) -> None:
        path = tmp_path / "restart.sqlite3"
        records = corpus()
        first = EmbeddedVectorStore(path, dimension=DIM)
        await first.upsert(records, namespace="ns")
        await first.delete([records[0].id], namespace="ns")
        query: dict[str, Any] = {
            "vector": records[5].values,
            "sparse": SparseVector([3, 11], [1.0, 2.0]),
            "top_k": 20,
        }
        before = await first.query(namespace="ns", **query, filter_={"year": {"$lt": 2008}})
        await first.close()
        second = EmbeddedVectorStore(path, dimension=DIM)
        after = await second.query(namespace="ns", **query, filter_={"year": {"$lt": 2008}})
        assert [(m.id, round(m.score, 5)) for m in after] == [
            (m.id, round(m.score, 5)) for m in before
        ]
        assert await second.count(namespace="ns") == len(records) - 1
        await second.close()

    async def test_a_store_of_another_dimension_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "dims.sqlite3"
        first = EmbeddedVectorStore(path, dimension=DIM)
        await first.upsert(corpus(2), namespace="ns")
        await first.close()
        with pytest.raises(RuntimeError, match="holds 8-d vectors"):
            EmbeddedVectorStore(path, dimension=16)


class TestPineconeAdapter(StoreContract):
    @pytest.fixture
    def server(self) -> Iterator:
        with live_server(pinecone_app(DIM)) as live:
            yield live

    @pytest.fixture
    async def store(self, server) -> AsyncIterator[VectorStore]:
        store = PineconeVectorStore(api_key="test-key", dimension=DIM, host=server.url)
        store.check()
        yield store
        await store.close()

    async def test_writes_are_batched_within_pinecone_limits(
        self, store: PineconeVectorStore, server
    ) -> None:
        records = [
            Record(f"b#{i}", corpus(1)[0].values, None, {"text": "x" * 1500}) for i in range(2500)
        ]
        await store.upsert(records, namespace="bulk")
        upserts = [body for path, body in server.app.state.requests if path == "/vectors/upsert"]
        assert [len(b["vectors"]) for b in upserts] == [len(b) for b in batches(records)]
        assert all(len(b["vectors"]) <= 1000 for b in upserts)
        assert len(upserts) >= 3
        assert await store.count(namespace="bulk") == 2500
        # Every value on the wire is a plain float (the SDK rejects numpy floats).
        assert all(isinstance(v, float) for v in upserts[0]["vectors"][0]["values"])

    async def test_a_wrong_dimension_is_refused_at_start(self, server) -> None:
        with pytest.raises(RuntimeError, match="holds 8-d vectors"):
            PineconeVectorStore(api_key="k", dimension=384, host=server.url).check()


class TestPostgresExact(StoreContract):
    @pytest.fixture
    async def store(self, pgvector_url: str) -> AsyncIterator[VectorStore]:
        store = await PostgresVectorStore(pgvector_url, dimension=DIM).open()
        yield store
        await store.close()

    async def test_an_unknown_operator_is_refused_not_guessed(self, store: VectorStore) -> None:
        await store.upsert(corpus(3), namespace="ns")
        with pytest.raises(FilterError, match=r"filter\.year: unknown operator '\$lt_e'"):
            await store.query(
                namespace="ns", vector=None, sparse=None, top_k=5, filter_={"year": {"$lt_e": 1}}
            )

    async def test_a_store_of_another_dimension_is_refused(self, pgvector_url: str) -> None:
        first = await PostgresVectorStore(pgvector_url, dimension=DIM).open()
        await first.close()
        with pytest.raises(
            RuntimeError, match="holds 8-d vectors but the embedding model makes 16-d"
        ):
            await PostgresVectorStore(pgvector_url, dimension=16).open()

    async def test_field_names_and_values_are_parameters_not_sql(self, store: VectorStore) -> None:
        hostile = "x') OR TRUE; DROP TABLE vector_records; --"
        records = corpus(6)
        records[0].metadata[hostile] = hostile
        await store.upsert(records, namespace="ns")
        hits = await store.query(
            namespace="ns",
            vector=records[3].values,
            sparse=None,
            top_k=10,
            filter_={hostile: hostile},
        )
        assert [m.id for m in hits] == [records[0].id]
        assert await store.count(namespace="ns") == 6


class TestPostgresIndexed(StoreContract):
    """Every query through the HNSW index (no exact scan): on these small sets its candidate
    pool holds every record, so the ranking must still be exact."""

    @pytest.fixture
    async def store(self, pgvector_url: str) -> AsyncIterator[VectorStore]:
        store = await PostgresVectorStore(pgvector_url, dimension=DIM, exact_limit=0).open()
        yield store
        await store.close()


async def test_every_store_ranks_alike(tmp_path: Path, pgvector_url: str) -> None:
    """Both embedded stores, Pinecone's client (against the brute-force fake) and pgvector
    return the same ids with the same scores."""
    records = corpus(90, seed=3)
    sparse = SparseVector([2, 5, 9, 17, 33], [0.7, 1.1, 0.3, 2.2, 0.9])
    with live_server(pinecone_app(DIM)) as server:
        stores: list[VectorStore] = [
            EmbeddedVectorStore(None, dimension=DIM),
            EmbeddedVectorStore(tmp_path / "v.sqlite3", dimension=DIM),
            PineconeVectorStore(api_key="k", dimension=DIM, host=server.url),
            await PostgresVectorStore(pgvector_url, dimension=DIM).open(),
            await PostgresVectorStore(pgvector_url, dimension=DIM, exact_limit=0).open(),
        ]
        rankings = []
        for store in stores:
            await store.upsert(records, namespace="ns")
            result = await store.query(
                namespace="ns",
                vector=records[10].values,
                sparse=sparse,
                top_k=25,
                filter_={"year": {"$ne": 2003}},
            )
            rankings.append([(m.id, round(m.score, 5)) for m in result])
            await store.close()
    assert all(ranking == rankings[0] for ranking in rankings), rankings
