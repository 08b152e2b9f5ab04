"""The FastAPI application: `create_app(settings)` builds it; components live in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from langchain_core.embeddings import Embeddings
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from backend.api.errors import install_error_handlers
from backend.api.inputs import storable_text_only
from backend.api.middleware import RequestContextMiddleware
from backend.api.routes import admin, auth, chat, conversations, documents, health, oidc, openai
from backend.api.routes.oidc import OidcClient
from backend.common.metrics import Metrics
from backend.common.settings import Settings, get_settings
from backend.llm import ChatModel
from backend.retrieval.store import VectorStore
from backend.services.components import build_components

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    model: ChatModel | None = None,
    models: Sequence[ChatModel] | None = None,
    embeddings: Embeddings | None = None,
    store: VectorStore | None = None,
) -> FastAPI:
    """Build the app for `settings` (default: the environment). Tests may hand in the chat
    model (or several, in fallback order), the embeddings or the vector store."""
    if model is not None:
        models = [model]
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        components = await build_components(
            settings, models=models, embeddings=embeddings, store=store, metrics=metrics
        )
        app.state.components = components
        if app.state.oidc is not None:  # users' sign-in tokens are refreshed through it
            components.user_models.refresher = app.state.oidc.refresh
        try:
            yield
        finally:
            await components.close()

    app = FastAPI(
        title="ragstream",
        summary="Retrieval-augmented chat that streams its answers over Server-Sent Events.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(storable_text_only)],  # before every route's own
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.state.metrics = metrics
    oidc_config = settings.resolved_oidc
    app.state.oidc = OidcClient(oidc_config) if oidc_config else None
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        production=settings.environment == "production",
    )
    if settings.trusted_proxies:  # outermost: everything after sees the real client
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    install_error_handlers(app)
    for router in (
        health.router,
        auth.router,
        oidc.router,
        conversations.router,
        conversations.messages_router,
        chat.router,
        documents.router,
        openai.router,
        admin.router,
    ):
        app.include_router(router)
    return app


def create_worker_app() -> FastAPI:
    """The app of one of `python -m backend`'s worker processes (uvicorn's factory)."""
    from backend.common.logs import configure as configure_logging
    from backend.common.settings import settings_or_exit
    from backend.llm.host import die_with_parent

    die_with_parent()
    settings = settings_or_exit()
    configure_logging(
        level=settings.log_level, fmt=settings.log_format, instance=settings.instance_name
    )
    return create_app(settings)
