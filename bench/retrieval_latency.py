"""Query latency of hybrid + filtered search (top 10) at 10k and 100k chunks (synthetic
chunks: random unit vectors, Zipf-distributed terms, metadata), by chunk and grouped by
document (4 chunks a document, 2 passages each), on the embedded store and, with
`--store postgres`, on pgvector beside it in the same run (with its write rate and its
recall@10 against exact search, with and without a selective filter).

    .venv/bin/python -m bench.retrieval_latency [--sizes 10000,100000] [--queries 200]
        [--store embedded,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from backend.retrieval.bm25 import BM25Encoder, CorpusDelta, SparseVector
from backend.retrieval.embedded import EmbeddedVectorStore
from backend.retrieval.retriever import GroupBy, HybridRetriever
from backend.retrieval.store import Record, VectorStore

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
    return _records(dense, counts, encoder, rng)


def text_windows(corpus: Path, n: int) -> list[str]:
    """`n` real texts from a BEIR corpus: each abstract's sentences (its passages, by id
    prefix, joined), then their pairs, triples... in reading order, so the vectors have
    the structure real chunks of these documents have."""
    abstracts: dict[str, list[str]] = {}
    for line in corpus.read_text().splitlines():
        if line:
            row = json.loads(line)
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", row["text"]) if s]
            abstracts.setdefault(row["_id"].split("-")[0], []).extend(sentences)
    texts: list[str] = []
    for size in range(1, max(map(len, abstracts.values())) + 1):
        for sentences in abstracts.values():
            for chosen in itertools.combinations(sentences, size):
                texts.append(" ".join(chosen))
                if len(texts) == n:
                    return texts
    raise SystemExit(f"{corpus} gives only {len(texts)} texts; ask for fewer chunks")


def embedded_texts(texts: list[str], cache: Path) -> np.ndarray:
    """The bundled model's vectors of `texts`, kept in `cache` (embedding 100k texts takes
    minutes on 2 cores)."""
    key = hashlib.blake2b("\n".join(texts).encode(), digest_size=8).hexdigest()
    path = cache / f"vectors-{len(texts)}-{key}.npy"
    if path.exists():
        return np.load(path)
    from backend.common.settings import Settings
    from backend.retrieval.embeddings import build_embeddings

    embeddings, _ = build_embeddings(Settings(_env_file=None))
    started = time.perf_counter()
    vectors = np.asarray(embeddings.embed_documents(texts), dtype=np.float32)
    print(f"  ({len(texts)} texts embedded in {time.perf_counter() - started:.0f} s)")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def real(
    n: int, rng: np.random.Generator, encoder: BM25Encoder, dataset: Path, cache: Path
) -> tuple[list[Record], np.ndarray, list[str]]:
    """Chunks of real text with the model's vectors, and the dataset's questions (their
    vectors and texts) as queries."""
    texts = text_windows(dataset / "corpus.jsonl", n)
    dense = embedded_texts(texts, cache)
    counts = [encoder.term_counts(t) for t in texts]
    questions = [
        json.loads(line)["text"]
        for line in (dataset / "queries.jsonl").read_text().splitlines()
        if line
    ]
    asked = embedded_texts(questions, cache)
    return _records(dense, counts, encoder, rng), asked, questions


def _records(
    dense: np.ndarray, counts: list, encoder: BM25Encoder, rng: np.random.Generator
) -> list[Record]:
    """Chunks of 4 per document: their vectors, BM25 weights (the corpus counted first)
    and metadata."""
    encoder.apply(CorpusDelta.of(counts))
    return [
        Record(
            f"doc{i // 4}#r#{i % 4}",
            dense[i].tolist(),
            encoder.encode_document(c),
            _metadata(i, rng),
        )
        for i, c in enumerate(counts)
    ]


def _metadata(i: int, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "year": int(rng.integers(1990, 2025)),
        "section": SECTIONS[i % 4],
        "meshes": [f"mesh{int(m)}" for m in rng.integers(0, 500, 3)],
        "text": "x",
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


FILTERS: list[dict[str, Any]] = [
    {"year": {"$gte": 2010}},
    {"section": "RESULTS", "meshes": {"$in": ["mesh1", "mesh2", "mesh3"]}},
    {"$or": [{"year": {"$lt": 2000}}, {"section": "METHODS"}]},
]
# For recall: none, broad (about 43% of chunks: the HNSW path) and selective (about 0.6%:
# the exact path).
RECALL_FILTERS: list[tuple[str, dict[str, Any] | None]] = [
    ("no filter", None),
    ("year >= 2010", {"year": {"$gte": 2010}}),
    ("one mesh term", {"meshes": "mesh7"}),
]


@asynccontextmanager
async def opened(kind: str, folder: Path, server: str | None) -> AsyncIterator[VectorStore]:
    if kind == "embedded":
        embedded = EmbeddedVectorStore(folder / "vectors.sqlite3", dimension=DIM)
        yield embedded
        await embedded.close()
        return
    from backend.retrieval.postgres_store import PostgresVectorStore
    from bench.pgvector import fresh_database

    assert server is not None
    async with fresh_database(server) as url:
        store = await PostgresVectorStore(url, dimension=DIM).open()
        try:
            yield store
        finally:
            await store.close()


async def recall(
    store: VectorStore,
    exact: VectorStore,
    encoder: BM25Encoder,
    vectors: np.ndarray,
    texts: list[str],
) -> None:
    """recall@10 of `store` against the exact store's top 10, dense and hybrid."""
    for name, filter_ in RECALL_FILTERS:
        for side in ("dense", "hybrid"):
            found = []
            for vector, text in zip(vectors, texts, strict=True):
                query: dict[str, Any] = {
                    "vector": (0.5 * vector).tolist(),
                    "sparse": None,
                    "top_k": 10,
                    "filter_": filter_,
                }
                if side == "hybrid":
                    sparse = encoder.encode_query(text)
                    top = sum(sparse.values) or 1.0
                    query["sparse"] = SparseVector(
                        sparse.indices, [0.5 * v / top for v in sparse.values]
                    )
                want = {m.id for m in await exact.query(namespace="ns", **query)}
                got = {m.id for m in await store.query(namespace="ns", **query)}
                found.append(len(want & got) / max(len(want), 1))
            print(f"    recall@10 {side:<6} {name:<14} {statistics.mean(found):.4f}")


@asynccontextmanager
async def bulk(store: VectorStore) -> AsyncIterator[None]:
    if isinstance(store, EmbeddedVectorStore):
        yield
    else:
        async with store.bulk():  # type: ignore[attr-defined]
            yield


async def bench(
    n: int,
    queries: int,
    rng: np.random.Generator,
    stores: list[str],
    server: str | None,
    exact_limits: list[int],
    dataset: Path | None,
    cache: Path,
) -> None:
    encoder = BM25Encoder()
    if dataset is None:
        records = synthetic(n, rng, encoder)
        query_vectors = rng.standard_normal((queries, DIM)).astype(np.float32)
        query_texts = [words(rng, 5) for _ in range(queries)]
    else:
        records, query_vectors, query_texts = real(n, rng, encoder, dataset, cache)

    class Precomputed(Embeddings):  # query vectors drawn up front: measures the search alone
        def __init__(self) -> None:
            self.i = 0

        def embed_query(self, _text: str) -> list[float]:
            self.i = (self.i + 1) % len(query_vectors)
            return query_vectors[self.i].tolist()

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise NotImplementedError("the benchmark searches only")

    texts = [query_texts[i % len(query_texts)] for i in range(queries)]
    medians: dict[tuple[str, str], float] = {}  # the embedded store's, the baseline
    with tempfile.TemporaryDirectory(prefix="ragstream-bench-") as tmp:
        exact = EmbeddedVectorStore(None, dimension=DIM)
        await exact.upsert(records, namespace="ns")
        for kind in stores:
            async with opened(kind, Path(tmp), server) as store:
                started = time.perf_counter()
                async with bulk(store):
                    for start in range(0, n, 1000):
                        await store.upsert(records[start : start + 1000], namespace="ns")
                load = time.perf_counter() - started
                how = "in bulk (HNSW built after)" if kind == "postgres" else ""
                print(f"{n:>7} chunks  {kind:<8} stored at {n / load:6.0f} chunks/s {how}")
                retriever = HybridRetriever(embeddings=Precomputed(), encoder=encoder, store=store)
                for limit in exact_limits if kind == "postgres" else [None]:
                    label = kind if limit is None else f"pg<={limit}"
                    if limit is not None:
                        store.exact_limit = limit  # type: ignore[attr-defined]
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
                                    filter_=FILTERS[i % 3],
                                    fusion=fusion,
                                    group_by=group_by,
                                    per_document=2,
                                )
                                latencies.append((time.perf_counter() - t0) * 1000)
                            p50 = statistics.median(latencies)
                            base = medians.setdefault((fusion, group_by), p50)
                            print(
                                f"{n:>7} chunks  {label:<9} {fusion:<6} by {group_by:<8}  "
                                f"p50 {p50:6.1f} ms  p99 {percentile(latencies, 99):6.1f} ms  "
                                f"({p50 / base:.2f}x embedded)"
                            )
                    if limit is not None:
                        await recall(store, exact, encoder, query_vectors[:100], query_texts[:100])
        await exact.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--store",
        default="embedded",
        help="comma-separated: embedded, postgres (pgvector: PGVECTOR_URL or a pgserver); "
        "the embedded store is the baseline of the ratios",
    )
    parser.add_argument(
        "--texts",
        type=Path,
        help="a BEIR corpus folder: chunks of its real text with the model's vectors, its "
        "questions as queries (default: random vectors and Zipf words)",
    )
    parser.add_argument("--cache", type=Path, default=Path(".bench-cache"), help="vectors kept")
    parser.add_argument(
        "--exact-limits",
        default="5000",
        help="pgvector: PGVECTOR_EXACT_LIMIT values to measure (the same loaded store)",
    )
    args = parser.parse_args()
    stores = args.store.split(",")
    if stores[0] != "embedded":
        stores.insert(0, "embedded")  # the baseline, in the same run
    rng = np.random.default_rng(7)
    print(f"hybrid (alpha 0.5) + metadata filter, top 10, {os.cpu_count()} cores; search only:")
    with ExitStack() as stack:
        server = None
        if "postgres" in stores:
            from bench.pgvector import pgvector_server

            server = stack.enter_context(pgvector_server())
        for n in (int(s) for s in args.sizes.split(",")):
            asyncio.run(
                bench(
                    n,
                    args.queries,
                    rng,
                    stores,
                    server,
                    [int(v) for v in args.exact_limits.split(",")],
                    args.texts,
                    args.cache,
                )
            )
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
