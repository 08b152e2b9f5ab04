"""Hybrid retrieval: the query embedded and BM25-encoded, searched in the caller's
namespaces under a metadata filter, and the dense and keyword evidence fused by `alpha`
(0 = keyword only, 1 = dense only).

Two fusions, chosen by measurement (`python -m backend.cli eval`, see docs/retrieval.md):
- `minmax`: a dense search and a keyword search, each scaled to [0, 1] by min-max over its
  candidates, mixed as `alpha·dense + (1 − alpha)·keyword`;
- `convex`: one query per namespace on the dotproduct index with the dense query scaled by
  `alpha` and the keyword query by `(1 − alpha)` over its largest possible BM25 score
  (so both sides live in [0, 1]) — Pinecone's own hybrid recipe, one request.
Both run the same code over any `VectorStore`, so every backend ranks alike.

A follow-up question can bring weighted `context` (the conversation's earlier questions,
services/query.py): its texts join the query on both sides, the dense query becoming the
weighted sum of their embeddings and the keyword query the weighted sum of their BM25
weights, so the question itself always counts most.

Then, optionally, a cross-encoder rescores the first candidates (`Reranker`), and results
are grouped by document: the best `per_document` passages of each of the best `top_k`
documents, merged in reading order into one result, so a long document cannot fill every
slot and citations never repeat a document.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from langchain_core.embeddings import Embeddings

from backend.retrieval.bm25 import BM25Encoder, SparseVector
from backend.retrieval.embeddings import QueryBatcher
from backend.retrieval.filters import Filter
from backend.retrieval.passage import Passage
from backend.retrieval.rerank import Reranker
from backend.retrieval.store import Match, VectorStore, rank

Fusion = Literal["minmax", "convex"]
GroupBy = Literal["document", "chunk"]
# Keys the service itself puts in chunk metadata.
TEXT_KEY = "text"
DOCUMENT_KEY = "document_id"


@dataclass
class SearchResult:
    passages: list[Passage]
    timings: dict[str, float] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    # Pinecone hands every number back as a float; whole ones read better as integers.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _passage(match: Match, score: float) -> Passage:
    metadata = {key: _plain(value) for key, value in match.metadata.items()}
    text = str(metadata.pop(TEXT_KEY, ""))
    document_id = str(metadata.pop(DOCUMENT_KEY, match.id))
    return Passage(match.id, document_id, text, score, metadata)


def _minmax(matches: Sequence[Match]) -> dict[str, float]:
    if not matches:
        return {}
    scores = [m.score for m in matches]
    low, high = min(scores), max(scores)
    span = high - low
    return {m.id: (m.score - low) / span if span > 0 else 1.0 for m in matches}


class HybridRetriever:
    def __init__(
        self,
        *,
        embeddings: Embeddings,
        encoder: BM25Encoder,
        store: VectorStore,
        fusion: Fusion = "convex",
        candidates: int = 100,
        reranker: Reranker | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.encoder = encoder
        self.store = store
        self.fusion = fusion
        self.candidates = candidates
        self.reranker = reranker
        self.queries = QueryBatcher(embeddings)

    async def embed_query(self, query: str) -> list[float]:
        return await self.queries.embed(query)

    async def _dense(self, query: str, context: Sequence[tuple[str, float]]) -> list[float]:
        if not context:
            return await self.embed_query(query)
        texts = [query, *(text for text, _ in context)]
        vectors = await asyncio.gather(*(self.embed_query(text) for text in texts))
        weights = [1.0, *(weight for _, weight in context)]
        total = np.zeros(len(vectors[0]), dtype=np.float64)
        for weight, vector in zip(weights, vectors, strict=True):
            total += weight * np.asarray(vector, dtype=np.float64)
        norm = float(np.linalg.norm(total))
        return (total / norm if norm > 0 else total).tolist()

    def _sparse(self, query: str, context: Sequence[tuple[str, float]]) -> SparseVector:
        encoded = self.encoder.encode_query(query)
        if not context:
            return encoded
        summed = dict(zip(encoded.indices, encoded.values, strict=True))
        for text, weight in context:
            other = self.encoder.encode_query(text)
            for index, value in zip(other.indices, other.values, strict=True):
                summed[index] = summed.get(index, 0.0) + weight * value
        indices = sorted(summed)
        return SparseVector(indices=indices, values=[summed[i] for i in indices])

    async def search(
        self,
        query: str,
        *,
        namespaces: Sequence[str],
        top_k: int,
        alpha: float,
        filter_: Filter | None = None,
        fusion: Fusion | None = None,
        group_by: GroupBy = "chunk",
        per_document: int = 1,
        rerank: bool = True,
        context: Sequence[tuple[str, float]] = (),
    ) -> SearchResult:
        """The best passages for `query` (with `context`: (text, weight) pairs that join
        it, each weighing `weight` against the query's 1)."""
        started = time.perf_counter()
        dense = await self._dense(query, context) if alpha > 0 else None
        sparse = self._sparse(query, context) if alpha < 1 else None
        encoded = time.perf_counter()
        reranker = self.reranker if rerank else None
        # Grouping needs more chunks than documents asked for; reranking its candidates.
        wanted = top_k * (per_document + 2) if group_by == "document" else top_k
        if reranker is not None:
            wanted = max(wanted, reranker.candidates)
        method = fusion or self.fusion
        if method == "convex":
            passages = await self._convex(dense, sparse, namespaces, wanted, alpha, filter_)
        else:
            passages = await self._minmax(dense, sparse, namespaces, wanted, alpha, filter_)
        searched = time.perf_counter()
        timings = {
            "encode_ms": (encoded - started) * 1000,
            "search_ms": (searched - encoded) * 1000,
        }
        if reranker is not None and passages:
            said = " ".join([*(text for text, _ in reversed(context)), query])
            passages = await reranker.rerank(said, passages)
            timings["rerank_ms"] = (time.perf_counter() - searched) * 1000
        if group_by == "document":
            passages = group_by_document(passages, top_k, per_document)
        else:
            passages = passages[:top_k]
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return SearchResult(passages, {k: round(v, 2) for k, v in timings.items()})

    async def _each_namespace(
        self,
        namespaces: Sequence[str],
        vector: list[float] | None,
        sparse: SparseVector | None,
        top_k: int,
        filter_: Filter | None,
    ) -> list[Match]:
        results = await asyncio.gather(
            *(
                self.store.query(
                    namespace=ns, vector=vector, sparse=sparse, top_k=top_k, filter_=filter_
                )
                for ns in namespaces
            )
        )
        return rank([m for matches in results for m in matches], top_k)

    async def _minmax(
        self,
        dense: list[float] | None,
        sparse: SparseVector | None,
        namespaces: Sequence[str],
        top_k: int,
        alpha: float,
        filter_: Filter | None,
    ) -> list[Passage]:
        pool = max(self.candidates, top_k)
        dense_hits = (
            await self._each_namespace(namespaces, dense, None, pool, filter_) if dense else []
        )
        keyword_hits = (
            await self._each_namespace(namespaces, None, sparse, pool, filter_)
            if sparse and sparse.indices
            else []
        )
        # A passage sharing no term with the query has no keyword evidence at all.
        keyword_hits = [m for m in keyword_hits if m.score > 0]
        dense_scores, keyword_scores = _minmax(dense_hits), _minmax(keyword_hits)
        by_id = {m.id: m for m in keyword_hits} | {m.id: m for m in dense_hits}
        fused = [
            Match(
                m.id,
                alpha * dense_scores.get(m.id, 0.0) + (1 - alpha) * keyword_scores.get(m.id, 0.0),
                m.metadata,
            )
            for m in by_id.values()
        ]
        return [_passage(m, m.score) for m in rank(fused, top_k)]

    async def _convex(
        self,
        dense: list[float] | None,
        sparse: SparseVector | None,
        namespaces: Sequence[str],
        top_k: int,
        alpha: float,
        filter_: Filter | None,
    ) -> list[Passage]:
        vector = [alpha * v for v in dense] if dense else None
        scaled = None
        if sparse and sparse.indices:
            # The largest BM25 score a chunk can reach for this query: every term saturated.
            ceiling = sum(sparse.values) * (self.encoder.k1 + 1) or 1.0
            scaled = SparseVector(
                sparse.indices, [(1 - alpha) * v / ceiling for v in sparse.values]
            )
        if vector is None and scaled is None:
            return []
        matches = await self._each_namespace(namespaces, vector, scaled, top_k, filter_)
        if vector is None:  # keyword only: no shared term, no evidence
            matches = [m for m in matches if m.score > 0]
        return [_passage(m, m.score) for m in matches]


def group_by_document(passages: Sequence[Passage], top_k: int, per_document: int) -> list[Passage]:
    """The best `per_document` passages of each of the best `top_k` documents (ranked by
    their best passage), each document's merged into one passage in reading order."""
    groups: dict[str, list[Passage]] = {}
    for passage in passages:  # best first
        group = groups.get(passage.document_id)
        if group is None:
            if len(groups) == top_k:
                continue
            group = groups[passage.document_id] = []
        if len(group) < per_document:
            group.append(passage)
    return [_merged(group) for group in groups.values()]


def _merged(group: list[Passage]) -> Passage:
    best = group[0]
    if len(group) == 1:
        return best
    ordered = sorted(group, key=lambda p: int(p.metadata.get("chunk_start", 0)))
    text = ordered[0].text
    end = int(ordered[0].metadata.get("chunk_start", 0)) + len(text)
    for passage in ordered[1:]:
        start = int(passage.metadata.get("chunk_start", 0))
        shared = end - start  # neighbouring chunks overlap: don't repeat their common text
        if 0 < shared < len(passage.text) and text.endswith(passage.text[:shared]):
            text += passage.text[shared:]
        else:
            text += "\n…\n" + passage.text
        end = start + len(passage.text)
    return Passage(best.id, best.document_id, text, best.score, best.metadata)
