"""Retrieval under load: chats with retrieval on, and searches, over a 100k-chunk corpus, at
1, 50 and 200 concurrent clients, on the service (`python -m backend`, one worker) with the
embedded store and with PostgreSQL (pgvector), each beside the raw pipeline in the same run.

The raw pipeline (`--serve-raw`, a process of its own) is the floor: the embedding model
called directly, an exact numpy hybrid scoring of the same vectors (the embedded store's
arithmetic without its filters, namespaces, grouping or locks), and, for a chat, the bare
relay of the same upstream (bench/bare_relay.py). The upstream is the loopback model of
bench.relay_load (answers at once, `--tokens` tokens every `--interval-ms`).

The corpus is synthetic (random unit vectors, Zipf-distributed words as in
bench.retrieval_latency) and is written into each store directly (pgvector in bulk, its
HNSW index built after); queries are real texts embedded by the bundled model.

Printed per store and client count: searches/s, search p50/p99, CPU per search, chat first
token p50/p99, CPU per answer (the service's process, and the PostgreSQL server's when the
benchmark started it), failed requests; and the ratios to the raw pipeline.

    .venv/bin/python -m bench.rag_load [--chunks 100000] [--clients 1,50,200]
        [--stores embedded,postgres] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import Request  # at module level: FastAPI reads the routes' annotations
from sse_starlette import EventSourceResponse

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from bench.pgvector import server_pid
from bench.relay_load import _LIMITLESS, PROVIDERS, cpu_seconds, process, register
from bench.retrieval_latency import synthetic, words
from tests.helpers import free_port

ALPHA = 0.5
TOP_K = 5
CORPUS = "corpus.npz"


# --- the raw pipeline -----------------------------------------------------------------------
def raw_app(folder: Path, upstream: str) -> Any:
    """Embed the query with the model, score every chunk exactly with numpy (convex
    fusion, as the service's default), and relay the upstream's answer."""
    import anyio
    import anyio.to_thread

    from backend.common.settings import Settings
    from backend.retrieval.bm25 import BM25Encoder, CorpusStats
    from backend.retrieval.embeddings import build_embeddings
    from bench.bare_relay import relay_app

    data = np.load(folder / CORPUS)
    dense, ids = data["dense"], data["ids"]
    tokens, weights, rows = data["tokens"], data["weights"], data["rows"]
    order = np.argsort(tokens, kind="stable")
    tokens, weights, rows = tokens[order], weights[order], rows[order]
    stats = json.loads((folder / "stats.json").read_text())
    encoder = BM25Encoder(
        CorpusStats(stats["n"], stats["len"], {int(k): v for k, v in stats["df"].items()})
    )
    embeddings, _ = build_embeddings(Settings(_env_file=None))

    def search(text: str) -> list[dict[str, Any]]:
        vector = np.asarray(embeddings.embed_query(text), dtype=np.float32)
        query = encoder.encode_query(text)
        top = sum(query.values) or 1.0
        scores = dense @ (ALPHA * vector)
        for tid, weight in zip(query.indices, query.values, strict=True):
            start, end = np.searchsorted(tokens, [tid, tid + 1])
            scores[rows[start:end]] += (1 - ALPHA) * weight / top * weights[start:end]
        best = np.argpartition(-scores, TOP_K)[:TOP_K]
        best = best[np.argsort(-scores[best])]
        return [{"id": str(ids[i]), "score": float(scores[i])} for i in best]

    one = anyio.CapacityLimiter(1)  # one search at a time: the model's threads uncontended
    app = relay_app(upstream)
    relay = next(r for r in app.routes if getattr(r, "path", "") == "/chat/stream")
    app.routes.remove(relay)

    @app.post("/search")
    async def search_route(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"results": await anyio.to_thread.run_sync(search, body["query"], limiter=one)}

    @app.post("/chat/stream")
    async def chat(request: Request) -> EventSourceResponse:
        body = await request.json()
        found = await anyio.to_thread.run_sync(search, body["message"], limiter=one)
        sources = "\n".join(f"[{i + 1}] {hit['id']}" for i, hit in enumerate(found))
        return await relay.endpoint(_Body({**body, "message": f"{sources}\n\n{body['message']}"}))  # type: ignore[attr-defined]

    return app


class _Body:
    """A request whose JSON body is given (the bare relay's handler reads only that)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    async def json(self) -> dict[str, Any]:
        return self.body


# --- building the corpus --------------------------------------------------------------------
async def build(
    chunks: int, folder: Path, stores: list[str], server: str | None, stack: AsyncExitStack
) -> dict[str, dict[str, str]]:
    """Write the corpus into each store (and its BM25 statistics into the app's database);
    returns each store's environment for the backend."""
    from pydantic import SecretStr

    from backend.common.settings import Settings
    from backend.db import repository
    from backend.db.engine import session_factory
    from backend.retrieval.bm25 import BM25Encoder, CorpusDelta
    from backend.retrieval.embedded import EmbeddedVectorStore
    from backend.retrieval.postgres_store import PostgresVectorStore
    from backend.services.components import open_database
    from backend.services.documents import SHARED_NAMESPACE

    rng = np.random.default_rng(11)
    encoder = BM25Encoder()
    records = synthetic(chunks, rng, encoder)
    np.savez(
        folder / CORPUS,
        dense=np.asarray([r.values for r in records], dtype=np.float32),
        ids=np.asarray([r.id for r in records]),
        tokens=np.concatenate(
            [np.asarray(r.sparse.indices, dtype=np.int64) for r in records if r.sparse]
        ),
        weights=np.concatenate(
            [np.asarray(r.sparse.values, dtype=np.float32) for r in records if r.sparse]
        ),
        rows=np.concatenate(
            [np.full(len(r.sparse.indices), i) for i, r in enumerate(records) if r.sparse]
        ),
    )
    stats = encoder.stats
    delta = CorpusDelta(stats.doc_count, stats.total_length, dict(stats.doc_freq))
    (folder / "stats.json").write_text(json.dumps(delta.to_json()))
    environments = {}
    for kind in stores:
        data = folder / kind
        data.mkdir()
        if kind == "embedded":
            database = f"sqlite+aiosqlite:///{data}/ragstream.db"
            store: Any = EmbeddedVectorStore(data / "vectors.sqlite3", dimension=384)
            for start in range(0, chunks, 1000):
                await store.upsert(records[start : start + 1000], namespace=SHARED_NAMESPACE)
        else:
            from bench.pgvector import fresh_database

            assert server is not None
            database = await stack.enter_async_context(fresh_database(server))
            store = await PostgresVectorStore(database, dimension=384).open()
            async with store.bulk():
                for start in range(0, chunks, 1000):
                    await store.upsert(records[start : start + 1000], namespace=SHARED_NAMESPACE)
        await store.close()
        settings = Settings(_env_file=None, data_dir=data, database_url=SecretStr(database))
        engine = await open_database(settings)
        async with session_factory(engine)() as session:
            await repository.apply_corpus_delta(session=session, delta=delta, sign=1)
            await session.commit()
        await engine.dispose()
        environments[kind] = {"DATA_DIR": str(data), "DATABASE_URL": database, "VECTOR_STORE": kind}
    return environments


# --- the load -------------------------------------------------------------------------------
@dataclass
class Round:
    latencies: list[float]
    seconds: float
    cpu: float
    failed: int

    @property
    def count(self) -> int:
        return len(self.latencies)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _searches(
    http: httpx.AsyncClient, headers: dict[str, str], texts: list[str], start: asyncio.Event
) -> tuple[list[float], int]:
    await start.wait()
    latencies, failed = [], 0
    for text in texts:
        body = {
            "query": text,
            "namespaces": ["shared"],
            "top_k": TOP_K,
            "alpha": ALPHA,
            "group_by": "chunk",
        }
        began = time.perf_counter()
        try:
            response = await http.post("/search", json=body, headers=headers)
            ok = response.status_code == 200 and response.json()["results"]
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append((time.perf_counter() - began) * 1000)
        else:
            failed += 1
    return latencies, failed


async def _chat(
    http: httpx.AsyncClient, headers: dict[str, str], text: str, start: asyncio.Event
) -> tuple[float | None, bool]:
    body = {
        "message": text,
        "max_tokens": 16,
        "retrieval": {"namespaces": ["shared"], "top_k": TOP_K, "alpha": ALPHA},
    }
    await start.wait()
    began, event = time.perf_counter(), ""
    first = None
    try:
        async with http.stream("POST", "/chat/stream", json=body, headers=headers) as response:
            if response.status_code != 200:
                return None, False
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "token" and first is None:
                    first = (time.perf_counter() - began) * 1000
                elif line.startswith("data:") and event in ("done", "error"):
                    return first, event == "done" and first is not None
    except httpx.HTTPError:
        pass
    return first, False


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def rounds(
    url: str,
    pids: list[int],
    headers: dict[str, str],
    clients: int,
    rng: np.random.Generator,
    searches: int,
) -> tuple[Round, Round]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        each = max(1, searches // clients)
        start = asyncio.Event()
        tasks = [
            asyncio.create_task(
                _searches(http, headers, [words(rng, 6) for _ in range(each)], start)
            )
            for _ in range(clients)
        ]
        await asyncio.sleep(0.2)
        cpu, began = cpu_of(pids), time.perf_counter()
        start.set()
        done = await asyncio.gather(*tasks)
        search = Round(
            [x for d in done for x in d[0]],
            time.perf_counter() - began,
            cpu_of(pids) - cpu,
            sum(d[1] for d in done),
        )
        start = asyncio.Event()
        chats = [
            asyncio.create_task(_chat(http, headers, words(rng, 6), start)) for _ in range(clients)
        ]
        await asyncio.sleep(0.2)
        cpu, began = cpu_of(pids), time.perf_counter()
        start.set()
        answered = await asyncio.gather(*chats)
        chat = Round(
            [a[0] for a in answered if a[1] and a[0] is not None],
            time.perf_counter() - began,
            cpu_of(pids) - cpu,
            sum(not a[1] for a in answered),
        )
    return search, chat


def line(
    name: str, clients: int, search: Round, chat: Round, base: tuple[Round, Round] | None
) -> str:
    rate = search.count / search.seconds
    cells = (
        f"{name:<9} {clients:>4}  {rate:7.1f}/s  p50 {statistics.median(search.latencies) if search.latencies else float('nan'):7.1f} "
        f"p99 {percentile(search.latencies, 99):7.1f} ms  CPU {search.cpu / max(search.count, 1) * 1000:5.1f} ms | "
        f"first token p50 {statistics.median(chat.latencies) if chat.latencies else float('nan'):7.1f} p99 {percentile(chat.latencies, 99):7.1f} ms  "
        f"CPU {chat.cpu / max(chat.count, 1) * 1000:5.1f} ms | failed {search.failed + chat.failed}"
    )
    if base is not None:
        raw_search, raw_chat = base
        cells += (
            f"\n{'':<15}vs raw: {rate / (raw_search.count / raw_search.seconds):.2f}x searches/s, "
            f"search p50 +{statistics.median(search.latencies) - statistics.median(raw_search.latencies):.1f} ms, "
            f"first token p50 {statistics.median(chat.latencies) / statistics.median(raw_chat.latencies):.2f}x, "
            f"CPU/answer {chat.cpu / max(chat.count, 1) / max(raw_chat.cpu / max(raw_chat.count, 1), 1e-9):.2f}x"
        )
    return cells


async def main_async(args: argparse.Namespace) -> None:
    clients = [int(c) for c in args.clients.split(",")]
    stores = args.stores.split(",")
    with tempfile.TemporaryDirectory(prefix="ragstream-ragload-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        server = None
        if "postgres" in stores:
            from bench.pgvector import pgvector_server

            server = stack.enter_context(pgvector_server())
        async with AsyncExitStack() as databases:
            began = time.perf_counter()
            environments = await build(args.chunks, folder, stores, server, databases)
            print(
                f"{args.chunks} chunks written into {', '.join(stores)} in {time.perf_counter() - began:.0f} s; {os.cpu_count()} cores"
            )
            upstream_port = free_port()
            upstream = f"http://127.0.0.1:{upstream_port}"
            command = [
                sys.executable,
                "-m",
                "bench.relay_load",
                "--interval-ms",
                str(args.interval_ms),
                "--serve-upstream",
                str(upstream_port),
                str(args.tokens),
            ]
            with process(command, upstream):
                raw_port = free_port()
                raw = f"http://127.0.0.1:{raw_port}"
                baseline: dict[int, tuple[Round, Round]] = {}
                rng = np.random.default_rng(5)
                with process(
                    [
                        sys.executable,
                        "-m",
                        "bench.rag_load",
                        "--serve-raw",
                        tmp,
                        upstream,
                        str(raw_port),
                    ],
                    f"{raw}/docs",
                ) as pid:
                    await rounds(raw, [pid], {}, 4, rng, 8)  # warm up
                    for n in clients:
                        baseline[n] = await rounds(raw, [pid], {}, n, rng, args.searches)
                        print(line("raw", n, *baseline[n], None), flush=True)
                for kind in stores:
                    port = free_port()
                    env = {
                        "PORT": str(port),
                        "WORKERS": "1",
                        "LOG_LEVEL": "warning",
                        "LLM_MODELS": json.dumps([PROVIDERS["openai"](upstream)]),
                        **_LIMITLESS,
                        **environments[kind],
                    }
                    wrap = []
                    if args.profile:
                        wrap = [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "--subprocesses",
                            "--rate",
                            "200",
                            "--format",
                            "raw",
                            "-o",
                            f"{args.profile}.{kind}",
                            "--",
                        ]
                    with process(
                        [*wrap, sys.executable, "-m", "backend"],
                        f"http://127.0.0.1:{port}/ready",
                        env,
                    ) as pid:
                        url = f"http://127.0.0.1:{port}"
                        headers = register(url)
                        # The database server's CPU counts too (a pgserver's, when it is one).
                        db = server_pid(server or "") if kind == "postgres" else None
                        pids = [pid, *([db] if db else [])]
                        await rounds(url, pids, headers, 4, rng, 8)
                        for n in clients:
                            print(
                                line(
                                    kind,
                                    n,
                                    *await rounds(url, pids, headers, n, rng, args.searches),
                                    baseline[n],
                                ),
                                flush=True,
                            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--clients", default="1,50,200")
    parser.add_argument("--stores", default="embedded,postgres")
    parser.add_argument(
        "--searches", type=int, default=400, help="searches per round, spread over the clients"
    )
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="the service under py-spy: collapsed stacks to FILE.<store>",
    )
    parser.add_argument("--serve-raw", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        import uvicorn

        folder, upstream, port = args.serve_raw
        uvicorn.run(
            raw_app(Path(folder), upstream), host="127.0.0.1", port=int(port), log_level="warning"
        )
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
