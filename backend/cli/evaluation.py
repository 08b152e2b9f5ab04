"""Retrieval quality on a BEIR-layout dataset (corpus.jsonl, queries.jsonl,
qrels/SPLIT.tsv), measured through the real ingestion and search path: recall@10,
recall@100, nDCG@10 and MRR for keyword-only, dense-only and hybrid search at several
alphas, plus timings and a filter check. `python -m backend.cli eval` prints it."""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from langchain_core.embeddings import Embeddings
from pydantic import SecretStr

from backend.cli.sources import batches, jsonl_documents
from backend.retrieval.chunking import chunk_text
from backend.retrieval.retriever import Fusion, HybridRetriever
from backend.services.ingestion import NewDocument

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from backend.db.models import User
    from backend.services.documents import DocumentService

log = logging.getLogger(__name__)


def _read_qrels(path: Path) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = defaultdict(set)
    with path.open(encoding="utf-8") as lines:
        next(lines)  # header
        for line in lines:
            query_id, corpus_id, score = line.rstrip("\n").split("\t")
            if float(score) > 0:
                relevant[query_id].add(corpus_id)
    return relevant


def _numbers(metadata: dict[str, Any]) -> dict[str, Any]:
    """Digit strings (a year) become numbers, so range filters work on them."""
    return {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in metadata.items()}


def unit_vectors(embeddings: Embeddings, texts: Sequence[str]) -> Any:
    """The embedding model's vectors of `texts`, each scaled to length 1 (rows of a numpy
    array: their dot products are cosines)."""
    import numpy as np

    vectors = np.asarray(embeddings.embed_documents(list(texts)))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def metrics(ranked: Sequence[str], relevant: set[str]) -> dict[str, float]:
    gains = [1.0 if doc in relevant else 0.0 for doc in ranked]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    first = next((i for i, g in enumerate(gains) if g), None)
    return {
        "ndcg@10": dcg / ideal if ideal else 0.0,
        "recall@10": sum(gains[:10]) / len(relevant),
        "recall@100": sum(gains[:100]) / len(relevant),
        "mrr": 1 / (first + 1) if first is not None else 0.0,
    }


def parse_fusions(text: str) -> list[Fusion]:
    """The fusions named in a comma-separated list, checked."""
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    known: tuple[Fusion, ...] = get_args(Fusion)
    unknown = [f for f in chosen if f not in known]
    if unknown:
        raise SystemExit(f"unknown fusion {', '.join(unknown)}; choose from {', '.join(known)}")
    return [k for c in chosen for k in known if k == c]


class _CachedQueries(Embeddings):
    """Wraps the embeddings so each query is embedded once across all configurations."""

    def __init__(self, embeddings: Embeddings) -> None:
        self.inner = embeddings
        self.cache: dict[str, list[float]] = {}

    def embed_query(self, text: str) -> list[float]:
        if text not in self.cache:
            self.cache[text] = self.inner.embed_query(text)
        return self.cache[text]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)


def read_split(dataset: Path, split: str) -> dict[str, set[str]]:
    """The relevance judgements of a split: `qrels/SPLIT.tsv`. `dev`, when the dataset has
    no such file, is made of training questions only: `train.tsv`, or else the questions
    of `all.tsv` that `test.tsv` does not hold (so a parameter chosen on dev never saw a
    test question)."""
    qrels = dataset / "qrels"
    if (qrels / f"{split}.tsv").is_file():
        return _read_qrels(qrels / f"{split}.tsv")
    if split == "dev":
        if (qrels / "train.tsv").is_file():
            return _read_qrels(qrels / "train.tsv")
        if (qrels / "all.tsv").is_file() and (qrels / "test.tsv").is_file():
            test = _read_qrels(qrels / "test.tsv")
            return {q: r for q, r in _read_qrels(qrels / "all.tsv").items() if q not in test}
    known = sorted(p.stem for p in qrels.glob("*.tsv"))
    raise SystemExit(
        f"{dataset}: no split {split!r} (qrels/{split}.tsv); splits: {', '.join(known)}"
        + ("; dev is made from train.tsv, or from all.tsv minus test.tsv" if split == "dev" else "")
    )


def _read_dataset(
    dataset: Path, split: str, query_limit: int | None, corpus_limit: int | None
) -> tuple[dict[str, str], dict[str, set[str]], list[NewDocument]]:
    """The split's queries (the first `query_limit` by id), their qrels, and the corpus (at
    most `corpus_limit` documents, every relevant one kept)."""
    qrels = read_split(dataset, split)
    queries = {}
    with (dataset / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            if item["_id"] in qrels:
                queries[item["_id"]] = item["text"]
    query_ids = sorted(queries)[:query_limit] if query_limit else sorted(queries)
    wanted = set().union(*(qrels[q] for q in query_ids))
    corpus = []
    for doc in jsonl_documents(dataset / "corpus.jsonl"):
        doc.metadata = _numbers(doc.metadata)
        corpus.append(doc)
    if corpus_limit and corpus_limit < len(corpus):
        # Keep every relevant passage, then fill with the others in file order.
        keep = [d for d in corpus if d.id in wanted]
        keep += [d for d in corpus if d.id not in wanted][: max(corpus_limit - len(keep), 0)]
        corpus = keep
    return {q: queries[q] for q in query_ids}, qrels, corpus


async def evaluate(
    dataset: Path,
    *,
    split: str = "test",
    alphas: Sequence[float] = (0.25, 0.5, 0.75),
    fusions: Sequence[Fusion] = ("minmax", "convex"),
    contextual: Sequence[bool] = (True,),
    corpus_limit: int | None = None,
    query_limit: int | None = None,
    embeddings: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Ingest the dataset into a fresh embedded store (once per `contextual` choice) and
    score every configuration, with results grouped by document and not."""
    from backend.common.settings import Settings
    from backend.retrieval.embeddings import build_embeddings

    queries, qrels, corpus = _read_dataset(dataset, split, query_limit, corpus_limit)
    settings = Settings(_env_file=None, vector_store="embedded", pinecone_api_key=None)
    if embeddings is None:
        embeddings, _ = build_embeddings(settings)
    cached = _CachedQueries(embeddings)
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "split": split,
        "queries": len(queries),
        "documents": len(corpus),
        "settings": {
            "bm25_k1": settings.bm25_k1,
            "bm25_b": settings.bm25_b,
            "chunk_size": settings.chunk_size,
            "passages_per_document": settings.retrieval_passages_per_document,
            "reranker": settings.reranker_model,
        },
        "rows": [],
    }
    for context in contextual:
        with tempfile.TemporaryDirectory(prefix="ragstream-eval-") as tmp:
            run = settings.model_copy(
                update={
                    "data_dir": Path(tmp),
                    "database_url": SecretStr(f"sqlite+aiosqlite:///{tmp}/eval.db"),
                    "contextual_chunks": context,
                }
            )
            measured = await _measure(run, cached, corpus, queries, qrels, alphas, fusions, quiet)
        for row in measured.pop("rows"):
            report["rows"].append({**row, "contextual": context})
        report.update(measured)
    # The embedding model alone on the same chunks, for comparison with ingestion.
    chunk_texts = [
        c.text
        for d in corpus
        for c in chunk_text(d.text, size=settings.chunk_size, overlap=settings.chunk_overlap)
    ][:1000]
    started = time.perf_counter()
    embeddings.embed_documents(chunk_texts)
    report["raw_embed_chunks_per_s"] = len(chunk_texts) / (time.perf_counter() - started)
    return report


async def _documents_found(retriever: HybridRetriever, query: str, **search: Any) -> list[str]:
    result = await retriever.search(query, **search)
    return list(dict.fromkeys(p.document_id for p in result.passages))


Configuration = tuple[str, Fusion, float, bool]  # name, fusion, alpha, reranked


@dataclass
class Ingested:
    """A corpus ingested for an evaluation: the documents service, the user whose private
    documents they are, the chunks and the seconds ingestion took."""

    documents: DocumentService
    user: User
    chunks: int
    seconds: float

    @property
    def namespaces(self) -> list[str]:
        return self.documents.readable_namespaces(self.user, ["private"])


async def ingest_corpus(
    documents: DocumentService,
    sessions: async_sessionmaker[AsyncSession],
    corpus: list[NewDocument],
    quiet: bool = True,
) -> Ingested:
    """`corpus` ingested through the service's own path, as a new user's private documents."""
    from backend.db import repository

    async with sessions() as session:
        user = await repository.create_user(session=session, username="eval", password_hash="-")
        await session.commit()
    started = time.perf_counter()
    chunks = 0
    for batch in batches(iter(corpus), 256):
        results = await documents.ingest(user=user, documents=batch, operator=True)
        chunks += sum(r.chunks for r in results)
        if not quiet:
            print(f"\ringested {chunks} chunks", end="", file=sys.stderr)
    if not quiet:
        print(file=sys.stderr)
    return Ingested(documents, user, chunks, time.perf_counter() - started)


@asynccontextmanager
async def ingested(
    settings: Any, embeddings: Embeddings, corpus: list[NewDocument], quiet: bool = True
) -> AsyncIterator[Ingested]:
    """`corpus` ingested through the service's own path into a fresh store and database."""
    from backend.db.engine import session_factory
    from backend.services.components import build_documents, open_database

    engine = await open_database(settings)
    sessions = session_factory(engine)
    documents = await build_documents(settings, sessions, embeddings=embeddings)
    try:
        yield await ingest_corpus(documents, sessions, corpus, quiet)
    finally:
        await documents.store.close()
        await engine.dispose()


async def _measure(
    settings: Any,
    embeddings: Embeddings,
    corpus: list[NewDocument],
    queries: dict[str, str],
    qrels: dict[str, set[str]],
    alphas: Sequence[float],
    fusions: Sequence[Fusion],
    quiet: bool,
) -> dict[str, Any]:
    """Ingest `corpus` through the service's own path, then score every configuration and
    check that filters hold."""
    async with ingested(settings, embeddings, corpus, quiet) as done:
        retriever = done.documents.retriever
        namespaces = done.namespaces
        per_document = settings.retrieval_passages_per_document
        rows = [
            await _score(retriever, configuration, namespaces, queries, qrels, per_document)
            for configuration in _configurations(settings, retriever, alphas, fusions)
        ]
        checks, violations = await _filter_violations(retriever, namespaces, queries)
    return {
        "chunks": done.chunks,
        "ingest_seconds": done.seconds,
        "ingest_chunks_per_s": done.chunks / done.seconds,
        "rows": rows,
        "filter_checks": checks,
        "filter_violations": violations,
    }


def _configurations(
    settings: Any, retriever: HybridRetriever, alphas: Sequence[float], fusions: Sequence[Fusion]
) -> list[Configuration]:
    """Keyword only, dense only, each fusion at each alpha, and reranked (when on)."""
    configurations: list[Configuration] = [
        ("keyword (BM25)", "minmax", 0.0, False),
        ("dense", "minmax", 1.0, False),
    ]
    for fusion in fusions:
        configurations += [(f"hybrid {fusion}", fusion, a, False) for a in alphas if 0 < a < 1]
    if retriever.reranker is not None:
        configurations.append(
            ("reranked", settings.retrieval_fusion, settings.retrieval_alpha, True)
        )
    return configurations


async def _score(
    retriever: HybridRetriever,
    configuration: Configuration,
    namespaces: list[str],
    queries: dict[str, str],
    qrels: dict[str, set[str]],
    per_document: int,
) -> dict[str, Any]:
    """One configuration's mean scores over the queries, grouped by document and not."""
    name, fusion, alpha, rerank = configuration
    totals: dict[str, float] = defaultdict(float)
    latencies = []
    for query_id, query in queries.items():
        search = {"namespaces": namespaces, "alpha": alpha, "fusion": fusion, "rerank": rerank}
        t0 = time.perf_counter()
        grouped = await _documents_found(
            retriever, query, group_by="document", top_k=100, per_document=per_document, **search
        )
        latencies.append((time.perf_counter() - t0) * 1000)
        for key, value in metrics(grouped, qrels[query_id]).items():
            totals[key] += value
        # Without grouping: the distinct documents of the first 10 chunks.
        ungrouped = await _documents_found(retriever, query, group_by="chunk", top_k=10, **search)
        totals["ndcg@10 ungrouped"] += metrics(ungrouped, qrels[query_id])["ndcg@10"]
    n = len(queries)
    return {
        "method": name,
        "fusion": fusion,
        "alpha": alpha,
        **{k: v / n for k, v in totals.items()},
        "p50_ms": statistics.median(latencies),
    }


FILTER_CHECKS: list[dict[str, Any]] = [
    {"section": "RESULTS"},
    {"year": {"$gte": 2010}},
    {"$or": [{"section": "CONCLUSIONS"}, {"meshes": "Humans"}]},
]


async def _filter_violations(
    retriever: HybridRetriever, namespaces: list[str], queries: dict[str, str]
) -> tuple[int, int]:
    """Searches with filters, and the passages returned that do not satisfy theirs."""
    from backend.retrieval.filters import matches

    searches = violations = 0
    for filter_ in FILTER_CHECKS:
        for query in list(queries.values())[:100]:
            result = await retriever.search(
                query, namespaces=namespaces, top_k=20, alpha=0.5, filter_=filter_
            )
            searches += 1
            violations += sum(not matches(filter_, {**p.metadata}) for p in result.passages)
    return searches, violations


def print_report(report: dict[str, Any]) -> None:
    r = report
    print(f"{r['dataset']} ({r['split']}): {r['queries']} queries, ", end="")
    print(f"{r['documents']} documents, {r['chunks']} chunks; settings: {r['settings']}")
    print(
        f"ingestion: {r['ingest_seconds']:.1f} s, {r['ingest_chunks_per_s']:.1f} chunks/s ", end=""
    )
    print(f"(embedding model alone on the same chunks: {r['raw_embed_chunks_per_s']:.1f} chunks/s)")
    print("nDCG@10 by document; ungrouped: the distinct documents of the first 10 chunks")
    header = (
        "method",
        "alpha",
        "context",
        "ungrouped",
        "nDCG@10",
        "R@10",
        "R@100",
        "MRR",
        "p50 ms",
    )
    print("{:<16} {:>5} {:>7} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7}".format(*header))
    for row in r["rows"]:
        values = [
            row[k] for k in ("ndcg@10 ungrouped", "ndcg@10", "recall@10", "recall@100", "mrr")
        ]
        print(
            "{:<16} {:>5.2f} {:>7} {:>9.4f} {:>8.4f} {:>7.4f} {:>7.4f} {:>7.4f}".format(
                row["method"], row["alpha"], "yes" if row["contextual"] else "no", *values
            ),
            f"{row['p50_ms']:>7.1f}",
        )
    print(f"filter checks: {r['filter_checks']} searches, ", end="")
    print(f"{r['filter_violations']} passages violating their filter")
