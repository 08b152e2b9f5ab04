"""Command-line tools: `python -m backend.cli ingest ...` and `python -m backend.cli eval ...`.

ingest: folders and JSONL files into the knowledge base, through the same ingestion path
        as the API, with a progress bar and a summary. For corpora too large for one request.
eval:   a BEIR-layout dataset (corpus.jsonl, queries.jsonl, qrels/*.tsv) through the real
        ingestion and search path: recall@10, recall@100, nDCG@10 and MRR for keyword-only,
        dense-only and hybrid search at several alphas, plus timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backend.retrieval.chunking import SUPPORTED, UnreadableFile, chunk_text, extract_text, kind_of
from backend.services.documents import DocumentIn

log = logging.getLogger("backend.cli")


# --- reading sources ---------------------------------------------------------------------
def _jsonl_documents(path: Path) -> Iterator[DocumentIn]:
    """JSONL lines `{id?, text, metadata?}` or BEIR's `{_id, title?, text, metadata?}`."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON ({exc.msg})") from exc
            text = item.get("text") or ""
            if item.get("title"):
                text = f"{item['title']}\n\n{text}"
            # Null is no metadata value (Pinecone's rule too): such keys are left out.
            metadata = {k: v for k, v in (item.get("metadata") or {}).items() if v is not None}
            if item.get("title"):
                metadata.setdefault("title", item["title"])
            yield DocumentIn(
                text=text,
                id=str(item.get("id") or item.get("_id") or "") or None,
                metadata=metadata,
                source=path.name,
            )


def _file_document(path: Path, root: Path) -> DocumentIn | None:
    kind = kind_of(path.name, None)
    if kind is None:
        return None
    try:
        text, info = extract_text(path.read_bytes(), kind)
    except UnreadableFile as exc:
        log.warning("skipped %s: %s", path, exc)
        return None
    if not text.strip():
        log.warning("skipped %s: no text", path)
        return None
    relative = str(path.relative_to(root)) if path != root else path.name
    metadata: dict[str, Any] = {"title": info.get("title") or path.stem}
    if "pages" in info:
        metadata["pages"] = info["pages"]
    return DocumentIn(text=text, id=relative.replace("#", "_"), metadata=metadata, source=relative)


def iter_documents(paths: Sequence[Path]) -> Iterator[DocumentIn]:
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix.lower() == ".jsonl":
                    yield from _jsonl_documents(file)
                elif file.suffix.lower() in SUPPORTED and (doc := _file_document(file, path)):
                    yield doc
        elif path.suffix.lower() == ".jsonl":
            yield from _jsonl_documents(path)
        elif path.is_file():
            if doc := _file_document(path, path.parent):
                yield doc
        else:
            raise SystemExit(f"{path}: no such file or folder")


def _batches(items: Iterator[DocumentIn], size: int) -> Iterator[list[DocumentIn]]:
    batch: list[DocumentIn] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- ingest ----------------------------------------------------------------------------------
async def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.components import build_documents, open_history
    from backend.db import repository
    from backend.db.engine import session_factory
    from backend.settings import get_settings

    settings = get_settings()
    engine = await open_history(settings)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            user = await repository.get_user_by_username(session=session, username=args.user)
        if user is None:
            print(
                f"no user {args.user!r}: register it first (POST /auth/register)", file=sys.stderr
            )
            return 2
        documents = await build_documents(settings, sessions)
        started = time.perf_counter()
        counts: dict[str, int] = defaultdict(int)
        chunks = 0
        progress = tqdm(unit="doc", desc="ingesting", disable=args.quiet)
        for batch in _batches(iter_documents(args.paths), args.batch_size):
            results = await documents.ingest(
                user=user, documents=batch, scope=args.namespace, operator=True
            )
            for result in results:
                counts[result.status] += 1
                if result.status != "unchanged":
                    chunks += result.chunks
            progress.update(len(batch))
            progress.set_postfix(chunks=chunks)
        progress.close()
        seconds = time.perf_counter() - started
        total = sum(counts.values())
        print(
            f"documents: {total} ({counts['created']} created, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged); chunks: {chunks}; seconds: {seconds:.1f}; "
            f"chunks/s: {chunks / seconds if seconds else 0:.1f}"
        )
        await documents.store.close()
        return 0
    finally:
        await engine.dispose()


# --- eval -----------------------------------------------------------------------------------
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


class _CachedQueries:
    """Wraps the embeddings so each query is embedded once across all configurations."""

    def __init__(self, embeddings: Any) -> None:
        self.inner = embeddings
        self.cache: dict[str, list[float]] = {}

    def embed_query(self, text: str) -> list[float]:
        if text not in self.cache:
            self.cache[text] = self.inner.embed_query(text)
        return self.cache[text]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)


async def evaluate(
    dataset: Path,
    *,
    split: str = "test",
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    fusions: Sequence[str] = ("minmax", "convex"),
    corpus_limit: int | None = None,
    query_limit: int | None = None,
    embeddings: Any = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Ingest the dataset into a fresh embedded store and score every configuration."""
    from backend.components import build_documents, open_history
    from backend.db import repository
    from backend.db.engine import session_factory
    from backend.retrieval.embeddings import build_embeddings
    from backend.retrieval.filters import matches
    from backend.settings import Settings

    qrels = _read_qrels(dataset / "qrels" / f"{split}.tsv")
    queries = {}
    with (dataset / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            if item["_id"] in qrels:
                queries[item["_id"]] = item["text"]
    query_ids = sorted(queries)[:query_limit] if query_limit else sorted(queries)
    wanted = set().union(*(qrels[q] for q in query_ids))
    corpus = []
    for doc in _jsonl_documents(dataset / "corpus.jsonl"):
        doc.metadata = _numbers(doc.metadata)
        corpus.append(doc)
    if corpus_limit and corpus_limit < len(corpus):
        # Keep every relevant passage, then fill with the others in file order.
        keep = [d for d in corpus if d.id in wanted]
        keep += [d for d in corpus if d.id not in wanted][: max(corpus_limit - len(keep), 0)]
        corpus = keep

    with tempfile.TemporaryDirectory(prefix="ragstream-eval-") as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(tmp),
            database_url=f"sqlite+aiosqlite:///{tmp}/eval.db",
            vector_store="embedded",
            pinecone_api_key=None,
        )
        if embeddings is None:
            embeddings, _ = build_embeddings(settings)
        cached = _CachedQueries(embeddings)
        engine = await open_history(settings)
        sessions = session_factory(engine)
        async with sessions() as session:
            user = await repository.create_user(session=session, username="eval", password_hash="-")
            await session.commit()
        documents = await build_documents(settings, sessions, embeddings=cached)  # type: ignore[arg-type]

        started = time.perf_counter()
        chunks = 0
        for batch in _batches(iter(corpus), 256):
            results = await documents.ingest(user=user, documents=batch, operator=True)
            chunks += sum(r.chunks for r in results)
            if not quiet:
                print(f"\ringested {chunks} chunks", end="", file=sys.stderr)
        ingest_seconds = time.perf_counter() - started
        if not quiet:
            print(file=sys.stderr)
        namespace = documents.readable_namespaces(user, ["private"])
        # The embedding model alone on the same chunks, for comparison with ingestion.
        chunk_texts = [
            c.text
            for d in corpus
            for c in chunk_text(d.text, size=settings.chunk_size, overlap=settings.chunk_overlap)
        ][:1000]
        started = time.perf_counter()
        embeddings.embed_documents(chunk_texts)
        raw_rate = len(chunk_texts) / (time.perf_counter() - started)

        retriever = documents.retriever
        configurations: list[tuple[str, str, float]] = [
            ("keyword (BM25)", "minmax", 0.0),
            ("dense", "minmax", 1.0),
        ]
        for fusion in fusions:
            configurations += [(f"hybrid {fusion}", fusion, a) for a in alphas if 0 < a < 1]
        rows = []
        for name, fusion, alpha in configurations:
            totals: dict[str, float] = defaultdict(float)
            latencies = []
            for query_id in query_ids:
                t0 = time.perf_counter()
                result = await retriever.search(
                    queries[query_id],
                    namespaces=namespace,
                    top_k=100,
                    alpha=alpha,
                    fusion=fusion,  # type: ignore[arg-type]
                )
                latencies.append((time.perf_counter() - t0) * 1000)
                ranked = list(dict.fromkeys(p.document_id for p in result.passages))
                for key, value in metrics(ranked, qrels[query_id]).items():
                    totals[key] += value
            n = len(query_ids)
            rows.append(
                {
                    "method": name,
                    "fusion": fusion,
                    "alpha": alpha,
                    **{k: v / n for k, v in totals.items()},
                    "p50_ms": statistics.median(latencies),
                }
            )

        # Filters: every passage returned must satisfy the filter, and filtered search finds
        # as many relevant passages within the filter as the filter allows.
        violations = 0
        checks = [
            {"section": "RESULTS"},
            {"year": {"$gte": 2010}},
            {"$or": [{"section": "CONCLUSIONS"}, {"meshes": "Humans"}]},
        ]
        for filter_ in checks:
            for query_id in query_ids[:100]:
                result = await retriever.search(
                    queries[query_id], namespaces=namespace, top_k=20, alpha=0.5, filter=filter_
                )
                violations += sum(not matches(filter_, {**p.metadata}) for p in result.passages)
        await documents.store.close()
        await engine.dispose()
    return {
        "dataset": dataset.name,
        "split": split,
        "queries": len(query_ids),
        "documents": len(corpus),
        "chunks": chunks,
        "ingest_seconds": ingest_seconds,
        "ingest_chunks_per_s": chunks / ingest_seconds,
        "raw_embed_chunks_per_s": raw_rate,
        "rows": rows,
        "filter_checks": len(checks) * min(len(query_ids), 100),
        "filter_violations": violations,
    }


def print_report(report: dict[str, Any]) -> None:
    r = report
    print(f"{r['dataset']} ({r['split']}): {r['queries']} queries, ", end="")
    print(f"{r['documents']} documents, {r['chunks']} chunks")
    print(
        f"ingestion: {r['ingest_seconds']:.1f} s, {r['ingest_chunks_per_s']:.1f} chunks/s ", end=""
    )
    print(f"(embedding model alone on the same chunks: {r['raw_embed_chunks_per_s']:.1f} chunks/s)")
    header = ("method", "alpha", "nDCG@10", "R@10", "R@100", "MRR", "p50 ms")
    print("{:<16} {:>5} {:>8} {:>7} {:>7} {:>7} {:>7}".format(*header))
    for row in r["rows"]:
        values = [row[k] for k in ("alpha", "ndcg@10", "recall@10", "recall@100", "mrr")]
        print(
            "{:<16} {:>5.2f} {:>8.4f} {:>7.4f} {:>7.4f} {:>7.4f}".format(row["method"], *values),
            f"{row['p50_ms']:>7.1f}",
        )
    print(f"filter checks: {r['filter_checks']} searches, ", end="")
    print(f"{r['filter_violations']} passages violating their filter")


async def _eval(args: argparse.Namespace) -> int:
    report = await evaluate(
        args.dataset,
        split=args.split,
        alphas=[float(a) for a in args.alphas.split(",")],
        fusions=args.fusions.split(","),
        corpus_limit=args.corpus_limit,
        query_limit=args.query_limit,
        quiet=args.quiet,
    )
    print_report(report)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(
        prog="python -m backend.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="ingest folders and JSONL files")
    ingest.add_argument("paths", nargs="+", type=Path, help="folders, files, or JSONL files")
    ingest.add_argument("--user", required=True, help="owner of the documents (a username)")
    ingest.add_argument("--namespace", choices=["private", "shared"], default="private")
    ingest.add_argument("--batch-size", type=int, default=64, help="documents per batch")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate_ = commands.add_parser("eval", help="measure retrieval on a BEIR-layout dataset")
    evaluate_.add_argument("dataset", type=Path)
    evaluate_.add_argument("--split", default="test", help="qrels file to use (qrels/SPLIT.tsv)")
    evaluate_.add_argument("--alphas", default="0.25,0.5,0.75", help="hybrid alphas to score")
    evaluate_.add_argument("--fusions", default="minmax,convex")
    evaluate_.add_argument(
        "--corpus-limit", type=int, help="keep the relevant passages and this many in all"
    )
    evaluate_.add_argument("--query-limit", type=int)
    evaluate_.add_argument("--json", help="also write the report to this file")
    evaluate_.add_argument("--quiet", action="store_true")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runner = _ingest if args.command == "ingest" else _eval
    return asyncio.run(runner(args))


if __name__ == "__main__":
    raise SystemExit(main())
