"""Search queries that arrive together are embedded in one batch, each gets its own vector,
a failure reaches every waiter of its batch, and a cancelled search does not stop others."""

from __future__ import annotations

import asyncio
import threading

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from backend.retrieval.embeddings import QueryBatcher


class Recording(Embeddings):
    """Shaped like HuggingFaceEmbeddings: `_embed(texts, kwargs)` with the query kwargs."""

    def __init__(self, fail: str | None = None) -> None:
        self.fake = DeterministicFakeEmbedding(size=8)
        self.batches: list[list[str]] = []
        self.fail = fail
        self.release = threading.Event()
        self.encode_kwargs: dict = {}
        self.query_encode_kwargs = {"prompt": "query: "}

    def _embed(self, texts: list[str], kwargs: dict) -> list[list[float]]:
        assert kwargs == {"prompt": "query: "}  # the query's encoding, not the documents'
        self.release.wait(5)
        self.batches.append(list(texts))
        if self.fail in texts:
            raise RuntimeError("model failed")
        return self.fake.embed_documents(texts)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError("queries are embedded as queries")

    def embed_query(self, text: str) -> list[float]:
        raise AssertionError("queries go through one batched call")


async def test_any_other_model_embeds_each_query_as_a_query() -> None:
    model = DeterministicFakeEmbedding(size=8)
    batcher = QueryBatcher(model)
    vectors = await asyncio.gather(*(batcher.embed(f"q{i}") for i in range(3)))
    assert vectors == [model.embed_query(f"q{i}") for i in range(3)]


async def test_queries_arriving_together_share_one_batch() -> None:
    model = Recording()
    batcher = QueryBatcher(model)
    first = asyncio.create_task(batcher.embed("q0"))
    await asyncio.sleep(0.05)  # q0's batch is running: the others wait for the next
    rest = [asyncio.create_task(batcher.embed(f"q{i}")) for i in range(1, 6)]
    await asyncio.sleep(0.05)
    model.release.set()
    vectors = await asyncio.gather(first, *rest)
    assert model.batches == [["q0"], ["q1", "q2", "q3", "q4", "q5"]]
    assert vectors == [model.fake.embed_query(f"q{i}") for i in range(6)]


async def test_a_failure_reaches_its_batch_and_the_next_batch_runs() -> None:
    model = Recording(fail="bad")
    model.release.set()
    batcher = QueryBatcher(model, max_batch=2)
    results = await asyncio.gather(
        batcher.embed("bad"), batcher.embed("x"), batcher.embed("good"), return_exceptions=True
    )
    assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError]
    assert results[2] == model.fake.embed_query("good")


async def test_a_cancelled_search_does_not_disturb_the_others() -> None:
    model = Recording()
    batcher = QueryBatcher(model)
    gone = asyncio.create_task(batcher.embed("gone"))
    kept = asyncio.create_task(batcher.embed("kept"))
    await asyncio.sleep(0.05)
    gone.cancel()
    model.release.set()
    assert await kept == model.fake.embed_query("kept")
    with pytest.raises(asyncio.CancelledError):
        await gone
