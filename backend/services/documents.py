"""Documents in and out of the knowledge base, and search over it, scoped to the caller.

Namespaces: each user has a private one (`user-<id>`); `shared` holds documents that
publishers (settings: PUBLISHERS) make visible to everyone. A caller searches only its own
private namespace and the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.common.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceError,
    Unavailable,
)
from backend.common.metrics import Metrics
from backend.common.settings import Settings
from backend.db import repository
from backend.db.models import Document, User, utcnow
from backend.retrieval.bm25 import CorpusDelta
from backend.retrieval.chunking import chunk_text
from backend.retrieval.filters import FilterError
from backend.retrieval.retriever import GroupBy, HybridRetriever, SearchResult
from backend.services.ingestion import (
    Identity,
    NewDocument,
    Preparation,
    check_metadata,
    embed_chunks,
    encode_records,
    stored_chunk_ids,
)
from backend.services.turns import Scope

log = logging.getLogger(__name__)

SHARED_NAMESPACE = "shared"


def namespace_of(user_id: str, scope: Scope) -> str:
    """The vector-store namespace of a user's scope: `shared`, or the user's own."""
    return SHARED_NAMESPACE if scope == "shared" else f"user-{user_id}"


def scope_of(namespace: str) -> Scope:
    return "shared" if namespace == SHARED_NAMESPACE else "private"


@dataclass
class IngestResult:
    id: str
    namespace: str
    status: Literal["created", "updated", "unchanged"]
    chunks: int


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

    def writable_namespace(self, user: User, scope: Scope, *, operator: bool = False) -> str:
        if scope == "shared" and not (operator or self.can_publish(user)):
            raise Forbidden(
                "publishing to the shared namespace needs publisher rights "
                "(the operator lists publishers in PUBLISHERS)"
            )
        return namespace_of(user.id, scope)

    @staticmethod
    def readable_namespaces(user: User, scopes: Sequence[Scope] | None) -> list[str]:
        everywhere: list[Scope] = ["private", "shared"]
        return [namespace_of(user.id, s) for s in dict.fromkeys(scopes or everywhere)]

    # --- ingestion -------------------------------------------------------------------------
    def validate(self, documents: Sequence[NewDocument]) -> None:
        if not documents:
            raise InvalidInput("send at least one document", field=("documents",))
        if len(documents) > self.settings.max_documents_per_request:
            raise InvalidInput(
                f"at most {self.settings.max_documents_per_request} documents per request; "
                "use the command-line ingester for large corpora",
                field=("documents",),
            )
        seen: dict[str, NewDocument] = {}
        for i, doc in enumerate(documents):
            where = ("documents", i)
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
                if seen.setdefault(doc.id, doc) != doc:  # the same document twice is merged
                    raise InvalidInput(
                        f"id {doc.id!r} appears twice, with different content",
                        field=(*where, "id"),
                    )
            check_metadata(doc.metadata, (*where, "metadata"))

    async def ingest(
        self,
        *,
        user: User,
        documents: Sequence[NewDocument],
        scope: Scope = "private",
        operator: bool = False,
    ) -> list[IngestResult]:
        """Chunk, embed and store documents; a document whose id exists is replaced, and
        one that is identical to what is stored is left as it is. All or nothing.
        `operator`: the command-line ingester, which may publish for any user."""
        async for results in self.ingest_batches(
            user=user, batches=[documents], scope=scope, operator=operator
        ):
            return results
        raise AssertionError("one batch in, one result out")

    async def ingest_batches(
        self,
        *,
        user: User,
        batches: Iterable[Sequence[NewDocument]],
        scope: Scope = "private",
        operator: bool = False,
        embed: Callable[[list[str]], list[list[float]]] | None = None,
    ) -> AsyncIterator[list[IngestResult]]:
        """`ingest` for each batch in turn (each all or nothing), yielding its results;
        the next batch is read and embedded while one is being stored. `embed`: how chunk
        texts become vectors (default: the embedding model here; the bulk pipeline hands
        in the vectors its workers made)."""
        namespace = self.writable_namespace(user, scope, operator=operator)
        embed = embed or self.retriever.embeddings.embed_documents

        async def prepare(
            batch: Sequence[NewDocument],
        ) -> tuple[list[Preparation], list[IngestResult]]:
            self.validate(batch)
            prepared, results = await self._prepare(user, namespace, batch)
            if prepared:
                await anyio.to_thread.run_sync(
                    lambda: embed_chunks(
                        prepared,
                        embed=embed,
                        encoder=self.encoder,
                        contextual=self.settings.contextual_chunks,
                    )
                )
            return prepared, results

        queue = iter(batches)
        first = next(queue, None)
        ahead = asyncio.create_task(prepare(first)) if first is not None else None
        try:
            while ahead is not None:
                prepared, results = await ahead
                following = next(queue, None)
                ahead = asyncio.create_task(prepare(following)) if following is not None else None
                if prepared:
                    async with self._write_lock:
                        prepared = await self._recheck(user, namespace, prepared, results)
                        encode_records(prepared, encoder=self.encoder)
                        await self._store(user, namespace, prepared)
                yield results
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead

    async def unchanged(
        self, *, user: User, documents: Sequence[NewDocument], scope: Scope = "private"
    ) -> set[str]:
        """The ids of those `documents` that are stored exactly as they are (a re-run of
        the bulk ingester skips them before any work)."""
        identities = {identity.id: identity for identity in map(Identity.of, documents)}
        namespace = namespace_of(user.id, scope)
        async with self.sessions() as session:
            stored = await repository.get_documents(
                session=session, namespace=namespace, ids=list(identities)
            )
        return {i for i, d in stored.items() if d.revision == identities[i].revision}

    async def _prepare(
        self, user: User, namespace: str, documents: Sequence[NewDocument]
    ) -> tuple[list[Preparation], list[IngestResult]]:
        identities = [Identity.of(doc) for doc in documents]
        # Several documents of one id in one request (the same text twice, say): the last
        # one is stored, and each of them reports its result.
        last = {identity.id: index for index, identity in enumerate(identities)}
        async with self.sessions() as session:
            existing = await repository.get_documents(
                session=session, namespace=namespace, ids=list(last)
            )
        by_id: dict[str, IngestResult] = {}
        todo: list[Preparation] = []
        for index, (doc, identity) in enumerate(zip(documents, identities, strict=True)):
            if last[identity.id] != index:
                continue
            old = existing.get(identity.id)
            self._check_owner(user, namespace, old)
            if old is not None and old.revision == identity.revision:
                by_id[identity.id] = IngestResult(
                    identity.id, namespace, "unchanged", old.chunk_count
                )
                continue
            chunks = chunk_text(
                doc.text, size=self.settings.chunk_size, overlap=self.settings.chunk_overlap
            )
            todo.append(Preparation(doc, identity, chunks, old))
            by_id[identity.id] = IngestResult(
                identity.id, namespace, "updated" if old else "created", len(chunks)
            )
        return todo, [by_id[identity.id] for identity in identities]

    @staticmethod
    def _check_owner(user: User, namespace: str, stored: Document | None) -> None:
        if stored is not None and stored.owner_id != user.id:
            raise Conflict(
                f"document id {stored.id!r} belongs to another publisher in {namespace!r}",
                field=("documents",),
            )

    async def _recheck(
        self,
        user: User,
        namespace: str,
        prepared: list[Preparation],
        results: list[IngestResult],
    ) -> list[Preparation]:
        """Under the write lock: what was prepared against the stored documents as they
        were may meet them changed (another request, the batch before): look again."""
        async with self.sessions() as session:
            current = await repository.get_documents(
                session=session, namespace=namespace, ids=[p.id for p in prepared]
            )
        result_of = {r.id: r for r in results}
        still = []
        for p in prepared:
            now = current.get(p.id)
            self._check_owner(user, namespace, now)
            result = result_of[p.id]
            if now is not None and now.revision == p.identity.revision:
                result.status, result.chunks = "unchanged", now.chunk_count
                continue
            p.old = now
            result.status = "updated" if now is not None else "created"
            still.append(p)
        return still

    async def _store(self, user: User, namespace: str, prepared: list[Preparation]) -> None:
        records = [r for p in prepared for r in p.records]
        new_ids = [r.id for r in records]
        batch = self.settings.upsert_batch_size
        try:
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
                    row.content_hash = p.identity.content_hash
                    row.revision = p.identity.revision
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
        try:
            await self.store.delete(stored_chunk_ids(document), namespace=namespace)
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
                found = [d for d in found if d.namespace == namespace_of(user.id, scope)]
            if not found:
                raise NotFound("document not found", field=("document_id",))
            if len(found) > 1:
                raise InvalidInput(
                    "you have a document with this id in several namespaces; "
                    "add ?namespace=private or ?namespace=shared",
                    field=("namespace",),
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
        group_by: GroupBy | None = None,
        context: Sequence[tuple[str, float]] = (),
        rerank: bool = True,
    ) -> SearchResult:
        """The best passages for `query` in the user's namespaces; `filter_` is a valid
        filter (the schemas check what requests send; a malformed one raises FilterError);
        `context`: weighted texts that join the query (a follow-up's earlier questions);
        `rerank`: by the cross-encoder, when there is one."""
        await self._refresh_stats()
        try:
            result = await self.retriever.search(
                query,
                namespaces=self.readable_namespaces(user, scopes),
                top_k=top_k or self.settings.retrieval_top_k,
                alpha=self.settings.retrieval_alpha if alpha is None else alpha,
                filter_=filter_ or None,
                group_by=group_by or self.settings.retrieval_group_by,
                per_document=self.settings.retrieval_passages_per_document,
                context=context,
                rerank=rerank,
            )
        except FilterError:
            raise
        except Exception as exc:
            log.exception("search failed")
            raise Unavailable("the vector store could not be searched; try again") from exc
        self.metrics.retrieval_seconds.observe(result.timings["total_ms"] / 1000)
        return result
