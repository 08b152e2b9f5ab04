"""Every external system behind one component, built once in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.embeddings import Embeddings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.common.metrics import Metrics
from backend.common.settings import Settings, reveal
from backend.db.answers import AnswerWrites
from backend.db.batch import BatchLoader
from backend.db.engine import create_engine, migrate, session_factory
from backend.db.models import User
from backend.llm import ChatModel, ModelCatalog, build_models
from backend.retrieval.bm25 import BM25Encoder
from backend.retrieval.retriever import HybridRetriever
from backend.retrieval.store import VectorStore
from backend.services.accounts import Accounts
from backend.services.answer import AnswerMetrics
from backend.services.chat import ChatService
from backend.services.documents import DocumentService
from backend.services.limits import Limits, TokenQuota
from backend.services.model_keys import UserModels
from backend.services.pipeline import AnswerPipeline
from backend.services.recorder import AnswerRecorder
from backend.services.relay import Relay

log = logging.getLogger(__name__)


@dataclass
class Components:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    models: ModelCatalog
    store: VectorStore
    documents: DocumentService
    metrics: Metrics
    chat_service: ChatService
    recorder: AnswerRecorder
    relay: Relay
    limits: Limits
    user_models: UserModels  # each user's own model key and the model it serves
    accounts: Accounts  # accounts of those who sign in with an OpenID Connect provider
    users: BatchLoader[User]  # authentication's lookups, many requests' in one query
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def database_ok(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:  # readiness reports it; the log says why
            log.warning("database check failed", exc_info=True)
            return False

    async def close(self) -> None:
        await self.relay.close()  # answers still running are kept as `interrupted`
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.recorder.save()
        await self.models.aclose()
        await self.user_models.aclose()
        await self.store.close()
        await self.engine.dispose()


async def build_vector_store(settings: Settings, dimension: int) -> VectorStore:
    match settings.resolved_vector_store:
        case "postgres":
            from backend.retrieval.postgres_store import PostgresVectorStore

            url = settings.resolved_vector_database_url
            assert url is not None  # the settings refuse postgres without one
            return await PostgresVectorStore(
                url,
                dimension=dimension,
                exact_limit=settings.pgvector_exact_limit,
                ef_search=settings.pgvector_ef_search,
            ).open()
        case "pinecone":
            from backend.retrieval.pinecone_store import PineconeVectorStore

            store = PineconeVectorStore(
                api_key=reveal(settings.pinecone_api_key) or "",
                dimension=dimension,
                host=settings.pinecone_host,
                index_name=settings.pinecone_index,
            )
            store.check()
            return store
        case _:
            from backend.retrieval.embedded import EmbeddedVectorStore

            return EmbeddedVectorStore(settings.data_dir / "vectors.sqlite3", dimension=dimension)


async def open_database(settings: Settings) -> AsyncEngine:
    """The database's engine (users, conversations, documents...), migrated to the newest
    schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def build_documents(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    *,
    embeddings: Embeddings | None = None,
    store: VectorStore | None = None,
    metrics: Metrics | None = None,
) -> DocumentService:
    """The knowledge base: embeddings, BM25 encoder, vector store, retriever, documents."""
    if embeddings is None:
        from backend.retrieval.embeddings import build_embeddings

        embeddings, dimension = build_embeddings(settings)
    else:
        dimension = len(embeddings.embed_query("dimension probe"))
    reranker = None
    if settings.reranker_model:
        from backend.retrieval.rerank import Reranker

        reranker = Reranker.load(settings.reranker_model, candidates=settings.rerank_candidates)
    store = store or await build_vector_store(settings, dimension)
    retriever = HybridRetriever(
        embeddings=embeddings,
        encoder=BM25Encoder(k1=settings.bm25_k1, b=settings.bm25_b),
        store=store,
        fusion=settings.retrieval_fusion,
        candidates=settings.retrieval_candidates,
        reranker=reranker,
    )
    documents = DocumentService(
        settings=settings, sessions=sessions, retriever=retriever, metrics=metrics
    )
    try:
        await documents.load_stats()
    except BaseException:
        await store.close()
        raise
    return documents


async def build_components(
    settings: Settings,
    *,
    models: Sequence[ChatModel] | None = None,
    embeddings: Embeddings | None = None,
    store: VectorStore | None = None,
    metrics: Metrics | None = None,
) -> Components:
    """Connect and migrate the database, load the models, open the vector store.
    Tests may hand in the chat models (in fallback order), the embeddings or the store."""
    metrics = metrics or Metrics()
    engine = await open_database(settings)
    sessions = session_factory(engine)
    try:
        catalog = ModelCatalog(models, settings=settings) if models else build_models(settings)
        documents = await build_documents(
            settings, sessions, embeddings=embeddings, store=store, metrics=metrics
        )
    except BaseException:
        await engine.dispose()
        raise
    log.info(
        "database: %s; chat models: %s; vector store: %s",
        engine.url.render_as_string(hide_password=True),
        ", ".join(f"{h.name} ({h.provider})" for h in catalog.models),
        settings.resolved_vector_store,
    )
    limits = Limits(settings)
    user_models = UserModels(settings=settings, sessions=sessions, catalog=catalog)
    relay = Relay()
    writes = AnswerWrites(engine)
    recorder = AnswerRecorder(
        writes,
        save_seconds=settings.stream_save_seconds,
        stale_seconds=settings.stream_stale_seconds,
        on_stop=relay.stop,
    )
    # Told of every answer's end, in this order (and its readers after them all).
    observers = [AnswerMetrics(metrics), TokenQuota(limits), recorder]
    pipeline = AnswerPipeline(settings=settings, documents=documents, observers=observers)
    return Components(
        settings=settings,
        engine=engine,
        sessions=sessions,
        models=catalog,
        store=documents.store,
        documents=documents,
        metrics=metrics,
        chat_service=ChatService(
            settings=settings,
            sessions=sessions,
            models=catalog,
            pipeline=pipeline,
            relay=relay,
            writes=writes,
            user_models=user_models,
            limits=limits,
        ),
        recorder=recorder,
        relay=relay,
        limits=limits,
        user_models=user_models,
        accounts=Accounts(settings=settings, sessions=sessions),
        users=BatchLoader(sessions, User),
        background=[asyncio.create_task(recorder.run(), name="save streaming answers")],
    )
