"""The Pinecone adapter: one serverless hybrid index (metric `dotproduct`), namespaces as
they are, writes batched within Pinecone's limits (1,000 records and 2 MB a request)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio.to_thread

from backend.retrieval.bm25 import SparseVector
from backend.retrieval.filters import Filter
from backend.retrieval.store import Match, Record, rank

log = logging.getLogger(__name__)

MAX_RECORDS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 2 * 1024 * 1024 - 64 * 1024  # headroom for the envelope
MAX_DELETE_IDS = 1000
MAX_TOP_K = 1000  # with metadata included


def _payload(record: Record) -> dict[str, Any]:
    # numpy floats fail the SDK's type checks: plain Python floats only.
    payload: dict[str, Any] = {
        "id": record.id,
        "values": [float(v) for v in record.values],
        "metadata": record.metadata,
    }
    if record.sparse is not None and record.sparse.indices:
        payload["sparse_values"] = {
            "indices": [int(i) for i in record.sparse.indices],
            "values": [float(v) for v in record.sparse.values],
        }
    return payload


def batches(records: Sequence[Record]) -> list[list[dict[str, Any]]]:
    """Split records into requests of at most 1,000 records and about 2 MB."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for record in records:
        payload = _payload(record)
        # 12 bytes a float is a safe over-estimate of its JSON.
        bytes_ = (
            len(json.dumps(payload["metadata"]))
            + 12
            * (
                len(payload["values"])
                + 2 * len(payload.get("sparse_values", {}).get("indices", []))
            )
            + len(record.id)
            + 64
        )
        if current and (
            len(current) >= MAX_RECORDS_PER_REQUEST or size + bytes_ > MAX_REQUEST_BYTES
        ):
            out.append(current)
            current, size = [], 0
        current.append(payload)
        size += bytes_
    if current:
        out.append(current)
    return out


class PineconeVectorStore:
    def __init__(
        self,
        *,
        api_key: str,
        dimension: int,
        host: str | None = None,
        index_name: str | None = None,
        pool_threads: int = 4,
    ) -> None:
        try:
            from pinecone import Pinecone
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "The Pinecone SDK is missing: `pip install pinecone==7.3.0`."
            ) from exc
        self.dimension = dimension
        client = Pinecone(api_key=api_key)
        if host:
            self.index = client.Index(host=host, pool_threads=pool_threads)
        elif index_name:
            self.index = client.Index(name=index_name, pool_threads=pool_threads)
        else:
            raise ValueError("PINECONE_HOST or PINECONE_INDEX is needed")

    def check(self) -> None:
        """Fail at start, with a clear message, if the index is not a usable hybrid index."""
        stats = self.index.describe_index_stats()
        dimension = stats.get("dimension") if hasattr(stats, "get") else stats.dimension
        if dimension and int(dimension) != self.dimension:
            raise RuntimeError(
                f"the Pinecone index holds {dimension}-d vectors but the embedding model makes "
                f"{self.dimension}-d ones; create a {self.dimension}-d dotproduct index"
            )

    async def upsert(self, records: Sequence[Record], *, namespace: str) -> None:
        for batch in batches(records):
            await anyio.to_thread.run_sync(
                partial(self.index.upsert, vectors=batch, namespace=namespace)
            )

    async def query(
        self,
        *,
        namespace: str,
        vector: list[float] | None,
        sparse: SparseVector | None,
        top_k: int,
        filter_: Filter | None = None,
    ) -> list[Match]:
        if vector is None and (sparse is None or not sparse.indices):
            return []
        kwargs: dict[str, Any] = {
            "namespace": namespace,
            "top_k": min(top_k, MAX_TOP_K),
            "include_metadata": True,
            # A dense index needs a dense query; zeros leave the score to the sparse side.
            "vector": [float(v) for v in vector] if vector is not None else [0.0] * self.dimension,
        }
        if sparse is not None and sparse.indices:
            kwargs["sparse_vector"] = {
                "indices": [int(i) for i in sparse.indices],
                "values": [float(v) for v in sparse.values],
            }
        if filter_:
            kwargs["filter"] = filter_
        response = await anyio.to_thread.run_sync(lambda: self.index.query(**kwargs))
        matches = [Match(m.id, float(m.score), dict(m.metadata or {})) for m in response.matches]
        return rank(matches, top_k)

    async def delete(self, ids: Sequence[str], *, namespace: str) -> None:
        ids = list(ids)
        for start in range(0, len(ids), MAX_DELETE_IDS):
            chunk = ids[start : start + MAX_DELETE_IDS]
            await anyio.to_thread.run_sync(
                partial(self.index.delete, ids=chunk, namespace=namespace)
            )

    async def list_ids(self, *, prefix: str, namespace: str) -> list[str]:
        def collect() -> list[str]:
            found: list[str] = []
            for page in self.index.list(prefix=prefix, namespace=namespace):
                found.extend(page)
            return sorted(found)

        return await anyio.to_thread.run_sync(collect)

    async def count(self, *, namespace: str) -> int:
        stats = await anyio.to_thread.run_sync(self.index.describe_index_stats)
        namespaces = stats.namespaces or {}
        summary = namespaces.get(namespace)
        return int(summary.vector_count) if summary else 0

    async def close(self) -> None:
        close = getattr(self.index, "close", None)
        if callable(close):
            await anyio.to_thread.run_sync(close)
