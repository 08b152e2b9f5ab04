"""copy-vectors: the embedded store's records into the pgvector store, or back, vectors as
stored (nothing re-embedded), every namespace, in batches; re-running it is safe (a record
already there is replaced). Documents and BM25 statistics live in DATABASE_URL and need no
copy: point the service at the other store and it finds everything."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from backend.retrieval.embedded import EmbeddedVectorStore
from backend.retrieval.postgres_store import PostgresVectorStore
from backend.retrieval.store import DimensionMismatch, Record, VectorStore

Kind = Literal["embedded", "postgres"]


class Copyable(VectorStore, Protocol):
    def records(self, namespace: str, *, batch: int = ...) -> AsyncIterator[list[Record]]: ...


class CopyError(RuntimeError):
    """The copy cannot start; the message says why."""


@dataclass
class Copied:
    namespaces: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(self.namespaces.values())


@dataclass
class Stores:
    """Where each kind of store is: the embedded file and the PostgreSQL URL."""

    embedded: Path
    postgres: str | None

    async def dimension(self, kind: Kind) -> int | None:
        if kind == "embedded":
            return EmbeddedVectorStore.stored_dimension(self.embedded)
        return await PostgresVectorStore.stored_dimension(self._url())

    def _url(self) -> str:
        if not self.postgres:
            raise CopyError(
                "no PostgreSQL: set VECTOR_DATABASE_URL (or DATABASE_URL), or --postgres"
            )
        return self.postgres

    async def open(self, kind: Kind, dimension: int) -> Copyable:
        if kind == "embedded":
            return EmbeddedVectorStore(self.embedded, dimension=dimension)
        return await PostgresVectorStore(self._url(), dimension=dimension).open()


async def namespaces(store: Copyable) -> list[str]:
    if isinstance(store, EmbeddedVectorStore):
        return store.namespaces()
    assert isinstance(store, PostgresVectorStore)
    return await store.namespaces()


async def copy_vectors(
    source: Kind, target: Kind, stores: Stores, *, quiet: bool = False
) -> Copied:
    if source == target:
        raise CopyError(f"the source and the target are both {source}")
    dimension = await stores.dimension(source)
    if dimension is None:
        raise CopyError(f"the {source} store holds no vectors to copy")
    held = await stores.dimension(target)
    if held is not None and held != dimension:
        raise CopyError(
            f"the dimensions differ: the {source} store holds {dimension}-d vectors, the "
            f"{target} store {held}-d ones (another embedding model); copy into an empty "
            "store, or re-ingest with one model"
        )
    copied = Copied()
    reader = await stores.open(source, dimension)
    try:
        try:
            writer = await stores.open(target, dimension)
        except DimensionMismatch as exc:
            raise CopyError(f"the dimensions differ: {exc}") from exc
        try:
            async with _bulk(writer):
                await _copy(reader, writer, target, copied, quiet=quiet)
        finally:
            await writer.close()
    finally:
        await reader.close()
    return copied


@asynccontextmanager
async def _bulk(store: Copyable) -> AsyncIterator[None]:
    """Into an empty pgvector store, the HNSW index is built once at the end."""
    if isinstance(store, PostgresVectorStore) and not await store.namespaces():
        async with store.bulk():
            yield
    else:
        yield


async def _copy(
    reader: Copyable, writer: Copyable, target: Kind, copied: Copied, *, quiet: bool
) -> None:
    for namespace in await namespaces(reader):
        count = 0
        async for batch in reader.records(namespace):
            await writer.upsert(batch, namespace=namespace)
            count += len(batch)
            if not quiet:
                print(f"\r{namespace}: {count} records", end="", file=sys.stderr)
        if not quiet:
            print(file=sys.stderr)
        copied.namespaces[namespace] = count
        there = await writer.count(namespace=namespace)
        if there < count:
            raise CopyError(f"{namespace}: {count} records read but {there} in the {target} store")
