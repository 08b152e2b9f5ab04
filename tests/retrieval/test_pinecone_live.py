"""The Pinecone adapter against a real index: opt-in, runs only when PINECONE_API_KEY and
PINECONE_TEST_HOST (the host of a dotproduct index of dimension 8) are set."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from backend.retrieval.bm25 import SparseVector
from backend.retrieval.pinecone_store import PineconeVectorStore
from tests.retrieval.test_stores import DIM, brute_force, corpus

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not (os.environ.get("PINECONE_API_KEY") and os.environ.get("PINECONE_TEST_HOST")),
        reason="live Pinecone tests need PINECONE_API_KEY and PINECONE_TEST_HOST (8-d dotproduct index)",
    ),
]


async def test_hybrid_filtered_queries_match_the_exact_ranking() -> None:
    store = PineconeVectorStore(
        api_key=os.environ["PINECONE_API_KEY"], dimension=DIM, host=os.environ["PINECONE_TEST_HOST"]
    )
    store.check()
    namespace = f"ragstream-test-{uuid.uuid4().hex[:8]}"
    records = corpus(30)
    try:
        await store.upsert(records, namespace=namespace)
        deadline = time.monotonic() + 60  # Pinecone is eventually consistent
        for _ in range(30):
            if (
                await store.count(namespace=namespace) >= len(records)
                or time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(2)
        sparse = SparseVector([3, 7, 11], [1.0, 0.5, 2.0])
        got = await store.query(
            namespace=namespace,
            vector=records[4].values,
            sparse=sparse,
            top_k=10,
            filter_={"year": {"$gte": 2003}},
        )
        want = brute_force(records, records[4].values, sparse, 10, {"year": {"$gte": 2003}})
        assert [m.id for m in got] == want
    finally:
        await store.delete([r.id for r in records], namespace=namespace)
        await store.close()
