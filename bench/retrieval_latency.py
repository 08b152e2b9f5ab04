"""Query latency of hybrid + filtered search (top 10) on the embedded store at 10k and
100k chunks (synthetic chunks: random unit vectors, Zipf-distributed terms, metadata), by
chunk and grouped by document (4 chunks a document, 2 passages each).

    .venv/bin/python -m bench.retrieval_latency [--sizes 10000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from backend.retrieval.bm25 import BM25Encoder, CorpusDelta
from backend.retrieval.embedded import EmbeddedVectorStore
from backend.retrieval.retriever import GroupBy, HybridRetriever
from backend.retrieval.store import Record

DIM = 384
VOCAB = 30_000
GROUPINGS: tuple[GroupBy, ...] = ("chunk", "document")
SECTIONS = ["BACKGROUND", "METHODS", "RESULTS", "CONCLUSIONS"]


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{int(k)}" for k in rng.zipf(1.3, n) % VOCAB)


def synthetic(n: int, rng: np.random.Generator, encoder: BM25Encoder) -> list[Record]:
    """Chunks of 60 Zipf-distributed words, encoded by the real BM25 encoder."""
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    counts = [encoder.term_counts(words(rng, 60)) for _ in range(n)]
    encoder.apply(CorpusDelta.of(counts))
    return [
        Record(
            f"doc{i // 4}#r#{i % 4}",
            dense[i].tolist(),
            encoder.encode_document(counts[i]),
            {
                "year": int(rng.integers(1990, 2025)),
                "section": SECTIONS[i % 4],
                "meshes": [f"mesh{int(m)}" for m in rng.integers(0, 500, 3)],
                "text": "x",
            },
        )
        for i in range(n)
    ]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def bench(n: int, queries: int, rng: np.random.Generator) -> None:
    store = EmbeddedVectorStore(None, dimension=DIM)
    encoder = BM25Encoder()
    started = time.perf_counter()
    records = synthetic(n, rng, encoder)
    for start in range(0, n, 1000):
        await store.upsert(records[start : start + 1000], namespace="ns")
    load = time.perf_counter() - started

    class Precomputed(Embeddings):  # query vectors drawn up front: measures the search alone
        def __init__(self) -> None:
            self.vectors = rng.standard_normal((queries, DIM)).astype(np.float32)
            self.i = 0

        def embed_query(self, _text: str) -> list[float]:
            self.i = (self.i + 1) % queries
            return self.vectors[self.i].tolist()

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise NotImplementedError("the benchmark searches only")

    retriever = HybridRetriever(embeddings=Precomputed(), encoder=encoder, store=store)
    texts = [words(rng, 5) for _ in range(queries)]
    filters: list[dict[str, Any]] = [
        {"year": {"$gte": 2010}},
        {"section": "RESULTS", "meshes": {"$in": ["mesh1", "mesh2", "mesh3"]}},
        {"$or": [{"year": {"$lt": 2000}}, {"section": "METHODS"}]},
    ]
    for fusion in ("minmax", "convex"):
        for group_by in GROUPINGS:
            latencies = []
            for i, text in enumerate(texts):
                t0 = time.perf_counter()
                await retriever.search(
                    text,
                    namespaces=["ns"],
                    top_k=10,
                    alpha=0.5,
                    filter_=filters[i % 3],
                    fusion=fusion,
                    group_by=group_by,
                    per_document=2,
                )
                latencies.append((time.perf_counter() - t0) * 1000)
            print(
                f"{n:>7} chunks  {fusion:<6} by {group_by:<8}  "
                f"p50 {statistics.median(latencies):6.1f} ms  "
                f"p99 {percentile(latencies, 99):6.1f} ms  (built in {load:.1f} s)"
            )
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    print(f"hybrid (alpha 0.5) + metadata filter, top 10, {os.cpu_count()} cores; search only:")
    for n in (int(s) for s in args.sizes.split(",")):
        asyncio.run(bench(n, args.queries, rng))
    from backend.common.settings import Settings
    from backend.retrieval.embeddings import build_embeddings

    embeddings, _ = build_embeddings(Settings(_env_file=None))
    embeddings.embed_query("warm up")
    times = []
    for i in range(50):
        t0 = time.perf_counter()
        embeddings.embed_query(f"does mitochondrial activity change in plant cell death {i}?")
        times.append((time.perf_counter() - t0) * 1000)
    print(
        "query embedding (all-MiniLM-L6-v2, CPU):",
        f"p50 {statistics.median(times):.1f} ms, p99 {percentile(times, 99):.1f} ms",
    )


if __name__ == "__main__":
    main()
