"""Ingestion rate against the embedding model's own, on the same chunks, in one run:
the model alone (every chunk's encoder text in one `embed_documents` call), the
single-process ingester (`DocumentService.ingest_batches`: embedding overlapped with
storing), and, with Ray installed, the bulk pipeline on 1 and 2 workers; `--store
embedded,postgres` adds the single-process ingester into pgvector (the HNSW index grown
record by record, as the API does).

    .venv/bin/python -m bench.ingest_rate DIR [--documents 1000] [--batch-size 64] [--ray 1,2]
        [--store embedded,postgres]

DIR is a BEIR-layout corpus (corpus.jsonl), e.g. the one `bench.abstracts_set` writes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pydantic import SecretStr

from backend.cli.sources import batches, jsonl_documents
from backend.common.settings import Settings
from backend.db import repository
from backend.db.engine import session_factory
from backend.retrieval.chunking import chunk_text
from backend.retrieval.embeddings import build_embeddings
from backend.services.components import build_documents, open_database
from backend.services.ingestion import NewDocument, contextual_texts


async def ingest(
    settings: Settings,
    documents: list[NewDocument],
    batch_size: int,
    embeddings: Any,
    ray: int,
    pgvector: str | None = None,
) -> tuple[int, float]:
    """Chunks stored and seconds, into a fresh store (the embedded one, or a fresh
    pgvector database on the server `pgvector`, which then holds the documents too)."""
    async with AsyncExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ragstream-bench-"))
        update: dict[str, Any] = {
            "data_dir": Path(tmp),
            "database_url": SecretStr(f"sqlite+aiosqlite:///{tmp}/bench.db"),
        }
        if pgvector:
            from bench.pgvector import fresh_database

            url = await stack.enter_async_context(fresh_database(pgvector))
            update |= {"database_url": SecretStr(url), "vector_store": "postgres"}
        run = settings.model_copy(update=update)
        engine = await open_database(run)
        sessions = session_factory(engine)
        async with sessions() as session:
            user = await repository.create_user(session=session, username="b", password_hash="-")
            await session.commit()
        service = await build_documents(run, sessions, embeddings=embeddings)
        embed = None
        started = time.perf_counter()
        todo: Any = batches(iter(documents), batch_size)
        if ray:
            from backend.cli.bulk import RayEmbedded, import_ray

            import_ray().init(num_cpus=ray, include_dashboard=False, log_to_driver=False)
            embedded = RayEmbedded()
            todo = embedded.batches(documents, settings=run, workers=ray, batch_size=batch_size)
            embed = embedded.embed
        chunks = 0
        async for results in service.ingest_batches(
            user=user, batches=todo, operator=True, embed=embed
        ):
            chunks += sum(r.chunks for r in results)
        seconds = time.perf_counter() - started
        if ray:
            import_ray().shutdown()
        await service.store.close()
        await engine.dispose()
    return chunks, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ray", default="1,2", help="Ray worker counts ('' for none)")
    parser.add_argument(
        "--store",
        default="embedded",
        help="comma-separated: embedded, postgres (pgvector: PGVECTOR_URL or a pgserver)",
    )
    args = parser.parse_args()

    settings = Settings(_env_file=None, vector_store="embedded", pinecone_api_key=None)
    documents = list(jsonl_documents(args.dataset / "corpus.jsonl"))[: args.documents]
    embeddings, _ = build_embeddings(settings)
    texts = [
        text
        for d in documents
        for text in contextual_texts(
            d, chunk_text(d.text, size=settings.chunk_size, overlap=settings.chunk_overlap)
        )
    ]
    embeddings.embed_documents(texts[:64])  # warm up
    started = time.perf_counter()
    embeddings.embed_documents(texts)
    model = len(texts) / (time.perf_counter() - started)
    print(f"{len(documents)} documents, {len(texts)} chunks, {os.cpu_count()} cores")
    print(f"{'embedding model alone':<34} {model:7.1f} chunks/s")
    runs: list[tuple[str, int, str | None]] = [("single-process ingester", 0, None)]
    runs += [
        (f"Ray, {n} worker{'s' if n > 1 else ''}", n, None)
        for n in map(int, filter(None, args.ray.split(",")))
    ]
    with ExitStack() as stack:
        if "postgres" in args.store.split(","):
            from bench.pgvector import pgvector_server

            server = stack.enter_context(pgvector_server())
            runs.append(("single-process ingester, pgvector", 0, server))
        if "embedded" not in args.store.split(","):
            runs = [run for run in runs if run[2]]
        for name, ray, pgvector in runs:
            chunks, seconds = asyncio.run(
                ingest(
                    settings, documents, args.batch_size, None if ray else embeddings, ray, pgvector
                )
            )
            rate = chunks / seconds
            print(f"{name:<34} {rate:7.1f} chunks/s  ({rate / model:.0%} of the model alone)")


if __name__ == "__main__":
    main()
