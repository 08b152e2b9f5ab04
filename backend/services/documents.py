"""Documents in and out of the knowledge base, and search over it, scoped to the caller.

Namespaces: each user has a private one (`user-<id>`); `shared` holds documents that
publishers (settings: PUBLISHERS) make visible to everyone. A caller searches only its own
private namespace and the shared one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import repository
from backend.db.models import Document, User, utcnow
from backend.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceError, Unavailable
from backend.metrics import Metrics
from backend.retrieval.bm25 import CorpusDelta, TermCounts
from backend.retrieval.chunking import chunk_text
from backend.retrieval.filters import FilterError, validate_filter
from backend.retrieval.retriever import DOCUMENT_KEY, TEXT_KEY, HybridRetriever, SearchResult
from backend.retrieval.store import Record
from backend.settings import Settings

log = logging.getLogger(__name__)

Scope = Literal["private", "shared"]
SHARED_NAMESPACE = "shared"
RESERVED_KEYS = frozenset({TEXT_KEY, DOCUMENT_KEY, "chunk_index", "chunk_start", "source"})
MAX_METADATA_BYTES = 8_192  # per document; each chunk adds its text (Pinecone: 40 KB a record)


def checked_filter(filter_: Any, field: tuple[str, ...]) -> Any:
    """`filter_` if well-formed, else a 422 naming the offending path (`field` says where
    the filter sits in the request)."""
    if filter_ is not None:
        try:
            validate_filter(filter_)
        except FilterError as exc:
            raise InvalidInput(f"{exc.path}: {exc.message}", field=field) from exc
    return filter_


def private_namespace(user_id: str) -> str:
    return f"user-{user_id}"


@dataclass
class DocumentIn:
    text: str
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


@dataclass
class IngestResult:
    id: str
    namespace: str
    status: Literal["created", "updated", "unchanged"]
    chunks: int


@dataclass
class _Prepared:
    document: DocumentIn
    id: str
    content_hash: str
    revision: str
    chunks: list[Record]
    delta: CorpusDelta
    old: Document | None


def _check_metadata(metadata: Any, where: tuple[str | int, ...]) -> None:
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be an object", field=where)
    for key, value in metadata.items():
        here = (*where, key)
        if not key or key.startswith("$"):
            raise InvalidInput("metadata keys must be non-empty and not start with '$'", field=here)
        if key in RESERVED_KEYS:
            raise InvalidInput(f"{key!r} is set by the service; choose another key", field=here)
        ok = (
            isinstance(value, str | bool)
            or (isinstance(value, int | float) and math.isfinite(value))
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        )
        if not ok:
            raise InvalidInput(
                "metadata values must be strings, numbers, booleans or lists of strings "
                "(no null, no nested objects)",
                field=here,
            )
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(
            f"metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}", field=where
        )


class DocumentService:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        retriever: HybridRetriever,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.sessions = sessions
        self.retriever = retriever
        self.store = retriever.store
        self.encoder = retriever.encoder
        self._write_lock = asyncio.Lock()
        self._stats_version = 0
        self._stats_checked = 0.0

    # --- corpus statistics -------------------------------------------------------------
    async def load_stats(self) -> None:
        async with self.sessions() as session:
            stats, version = await repository.load_corpus_stats(session=session)
        self.encoder.stats = stats
        self._stats_version = version
        self._stats_checked = time.monotonic()

    async def _refresh_stats(self) -> None:
        """Pick up statistics other replicas changed (checked at most every few seconds)."""
        if time.monotonic() - self._stats_checked < self.settings.bm25_refresh_seconds:
            return
        async with self.sessions() as session:
            version = await repository.corpus_stats_version(session=session)
        self._stats_checked = time.monotonic()
        if version != self._stats_version and not self._write_lock.locked():
            await self.load_stats()

    # --- namespaces ----------------------------------------------------------------------
    def can_publish(self, user: User) -> bool:
        return user.username in self.settings.publishers

    def namespace(self, user: User, scope: Scope, *, operator: bool = False) -> str:
        if scope == "shared":
            if not (operator or self.can_publish(user)):
                raise Forbidden(
                    "publishing to the shared namespace needs publisher rights "
                    "(the operator lists publishers in PUBLISHERS)"
                )
            return SHARED_NAMESPACE
        return private_namespace(user.id)

    @staticmethod
    def readable_namespaces(user: User, scopes: Sequence[Scope] | None) -> list[str]:
        scopes = scopes or ["private", "shared"]
        return [
            SHARED_NAMESPACE if s == "shared" else private_namespace(user.id)
            for s in dict.fromkeys(scopes)
        ]

    # --- ingestion -------------------------------------------------------------------------
    def validate(self, documents: Sequence[DocumentIn]) -> None:
        if not documents:
            raise InvalidInput("send at least one document", field=("body", "documents"))
        if len(documents) > self.settings.max_documents_per_request:
            raise InvalidInput(
                f"at most {self.settings.max_documents_per_request} documents per request; "
                "use the command-line ingester for large corpora",
                field=("body", "documents"),
            )
        seen: set[str] = set()
        for i, doc in enumerate(documents):
            where = ("body", "documents", i)
            if not doc.text.strip():
                raise InvalidInput("text must not be empty", field=(*where, "text"))
            if len(doc.text) > self.settings.max_document_chars:
                raise InvalidInput(
                    f"text is {len(doc.text)} characters; the limit is "
                    f"{self.settings.max_document_chars}",
                    field=(*where, "text"),
                )
            if doc.id is not None:
                if not doc.id.strip() or len(doc.id) > 200 or "#" in doc.id:
                    raise InvalidInput(
                        "id must be 1-200 characters without '#'", field=(*where, "id")
                    )
                if doc.id in seen:
                    raise InvalidInput(f"id {doc.id!r} appears twice", field=(*where, "id"))
                seen.add(doc.id)
            _check_metadata(doc.metadata, (*where, "metadata"))

    async def ingest(
        self,
        *,
        user: User,
        documents: Sequence[DocumentIn],
        scope: Scope = "private",
        operator: bool = False,
    ) -> list[IngestResult]:
        """Chunk, embed and store documents; a document whose id exists is replaced, and
        one that is identical to what is stored is left as it is. All or nothing.
        `operator`: the command-line ingester, which may publish for any user."""
        self.validate(documents)
        namespace = self.namespace(user, scope, operator=operator)
        async with self._write_lock:
            prepared, results = await self._prepare(user, namespace, documents)
            if prepared:
                await self._store(user, namespace, prepared)
        return results

    async def _prepare(
        self, user: User, namespace: str, documents: Sequence[DocumentIn]
    ) -> tuple[list[_Prepared], list[IngestResult]]:
        items = []
        for doc in documents:
            content_hash = hashlib.sha256(doc.text.encode()).hexdigest()
            doc_id = doc.id or f"doc-{content_hash[:24]}"
            revision = hashlib.sha256(
                (
                    content_hash + json.dumps(doc.metadata, sort_keys=True) + (doc.source or "")
                ).encode()
            ).hexdigest()[:12]
            items.append((doc, doc_id, content_hash, revision))
        async with self.sessions() as session:
            existing = await repository.get_documents(
                session=session, namespace=namespace, ids=[i[1] for i in items]
            )
        results: list[IngestResult] = []
        todo: list[tuple[DocumentIn, str, str, str, Document | None, list]] = []
        for (
            doc,
            doc_id,
            content_hash,
            revision,
        ) in items:
            old = existing.get(doc_id)
            if old is not None and old.owner_id != user.id:
                raise Conflict(
                    f"document id {doc_id!r} belongs to another publisher in {namespace!r}",
                    field=("body", "documents"),
                )
            if old is not None and old.revision == revision:
                results.append(IngestResult(doc_id, namespace, "unchanged", old.chunk_count))
                continue
            chunks = chunk_text(
                doc.text, size=self.settings.chunk_size, overlap=self.settings.chunk_overlap
            )
            todo.append((doc, doc_id, content_hash, revision, old, chunks))
            results.append(
                IngestResult(doc_id, namespace, "updated" if old else "created", len(chunks))
            )
        if not todo:
            return [], results

        texts = [chunk.text for *_, chunks in todo for chunk in chunks]
        counts: list[TermCounts] = [self.encoder.term_counts(text) for text in texts]
        vectors = await anyio.to_thread.run_sync(self.retriever.embeddings.embed_documents, texts)
        # Encode against the statistics as they will be, this batch included.
        batch_delta = CorpusDelta.of(counts)
        self.encoder.apply(batch_delta)
        try:
            sparse = [self.encoder.encode_document(c) for c in counts]
        finally:
            self.encoder.apply(batch_delta, -1)

        prepared, position = [], 0
        for doc, doc_id, content_hash, revision, old, chunks in todo:
            records = []
            for chunk in chunks:
                metadata = {
                    **doc.metadata,
                    TEXT_KEY: chunk.text,
                    DOCUMENT_KEY: doc_id,
                    "chunk_index": chunk.index,
                    "chunk_start": chunk.start,
                }
                if doc.source:
                    metadata["source"] = doc.source
                records.append(
                    Record(
                        id=f"{doc_id}#{revision}#{chunk.index}",
                        values=[float(v) for v in vectors[position]],
                        sparse=sparse[position],
                        metadata=metadata,
                    )
                )
                position += 1
            delta = CorpusDelta.of(counts[position - len(chunks) : position])
            prepared.append(_Prepared(doc, doc_id, content_hash, revision, records, delta, old))
        return prepared, results

    async def _store(self, user: User, namespace: str, prepared: list[_Prepared]) -> None:
        new_ids = [r.id for p in prepared for r in p.chunks]
        batch = self.settings.upsert_batch_size
        try:
            records = [r for p in prepared for r in p.chunks]
            for start in range(0, len(records), batch):
                await self.store.upsert(records[start : start + batch], namespace=namespace)
            async with self.sessions() as session:
                now = utcnow()
                for p in prepared:
                    if p.old is not None:
                        await repository.apply_corpus_delta(
                            session=session, delta=CorpusDelta.from_json(p.old.bm25), sign=-1
                        )
                        row = await session.merge(p.old)
                    else:
                        row = Document(
                            namespace=namespace, id=p.id, owner_id=user.id, created_at=now
                        )
                        session.add(row)
                    row.source = p.document.source
                    row.content_hash = p.content_hash
                    row.revision = p.revision
                    row.doc_metadata = p.document.metadata
                    row.chunk_count = len(p.chunks)
                    row.char_count = len(p.document.text)
                    row.bm25 = p.delta.to_json()
                    row.updated_at = now
                    await repository.apply_corpus_delta(session=session, delta=p.delta, sign=1)
                await session.commit()
        except BaseException as exc:
            # Leave the store as it was: the new chunks go, the old ones were never touched.
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.delete(new_ids, namespace=namespace)
                except Exception:
                    log.exception("could not remove the chunks of a failed ingestion")
            if isinstance(exc, Exception) and not isinstance(exc, ServiceError):
                log.exception("ingestion failed; nothing was changed")
                raise Unavailable(
                    "the vector store could not take the documents; nothing was changed, try again"
                ) from exc
            raise
        for p in prepared:
            if p.old is not None:
                self.encoder.apply(CorpusDelta.from_json(p.old.bm25), -1)
            self.encoder.apply(p.delta)
        for p in prepared:
            if p.old is not None:
                await self._delete_chunks(namespace, p.old)
        await self._note_own_write()

    async def _delete_chunks(self, namespace: str, document: Document) -> None:
        ids = [f"{document.id}#{document.revision}#{i}" for i in range(document.chunk_count)]
        try:
            await self.store.delete(ids, namespace=namespace)
        except Exception:  # the SQL side is committed; orphans are found by prefix later
            log.exception("could not delete the old chunks of %s in %s", document.id, namespace)

    async def _note_own_write(self) -> None:
        async with self.sessions() as session:
            self._stats_version = await repository.corpus_stats_version(session=session)

    # --- listing and deleting ------------------------------------------------------------
    async def list(self, *, user: User, limit: int, offset: int) -> tuple[Sequence[Document], int]:
        async with self.sessions() as session:
            return await repository.list_documents(
                session=session, owner_id=user.id, limit=limit, offset=offset
            )

    async def delete(self, *, user: User, document_id: str, scope: Scope | None = None) -> Document:
        async with self._write_lock, self.sessions() as session:
            found = await repository.owned_documents(
                session=session, owner_id=user.id, document_id=document_id
            )
            if scope is not None:
                wanted = SHARED_NAMESPACE if scope == "shared" else private_namespace(user.id)
                found = [d for d in found if d.namespace == wanted]
            if not found:
                raise NotFound("document not found", field=("path", "document_id"))
            if len(found) > 1:
                raise InvalidInput(
                    "you have a document with this id in several namespaces; "
                    "add ?namespace=private or ?namespace=shared",
                    field=("query", "namespace"),
                )
            document = found[0]
            await repository.apply_corpus_delta(
                session=session, delta=CorpusDelta.from_json(document.bm25), sign=-1
            )
            await session.delete(document)
            await session.commit()
        self.encoder.apply(CorpusDelta.from_json(document.bm25), -1)
        await self._delete_chunks(document.namespace, document)
        await self._note_own_write()
        return document

    # --- search -----------------------------------------------------------------------------
    async def search(
        self,
        *,
        user: User,
        query: str,
        scopes: Sequence[Scope] | None,
        filter_: Any,
        top_k: int | None,
        alpha: float | None,
        field_prefix: tuple[str, ...] = ("body",),
    ) -> SearchResult:
        checked_filter(filter_, (*field_prefix, "filter"))
        await self._refresh_stats()
        try:
            result = await self.retriever.search(
                query,
                namespaces=self.readable_namespaces(user, scopes),
                top_k=top_k or self.settings.retrieval_top_k,
                alpha=self.settings.retrieval_alpha if alpha is None else alpha,
                filter=filter_ or None,
            )
        except Exception as exc:
            log.exception("search failed")
            raise Unavailable("the vector store could not be searched; try again") from exc
        self.metrics.retrieval_seconds.observe(result.timings["total_ms"] / 1000)
        return result
