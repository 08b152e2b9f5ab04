"""The FastAPI application: `create_app(settings)` builds it; components live in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from langchain_core.embeddings import Embeddings

from backend.api.routes import auth, chat, conversations, documents, health
from backend.components import build_components
from backend.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
    UpstreamFailed,
)
from backend.llm import ChatModelHandle
from backend.retrieval.store import VectorStore
from backend.settings import Settings, get_settings

log = logging.getLogger(__name__)

ERROR_STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    InvalidInput: 422,
    Conflict: 409,
    NotAuthenticated: 401,
    UpstreamFailed: 502,
    Forbidden: 403,
    PayloadTooLarge: 413,
    Unavailable: 503,
}


def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = next((code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind)), 400)
    detail: object = exc.detail
    if status == 422 and exc.field:
        # The same shape as FastAPI's own validation errors, so clients parse one format.
        detail = [{"loc": list(exc.field), "msg": exc.detail, "type": "value_error"}]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(
    settings: Settings | None = None,
    *,
    model: ChatModelHandle | None = None,
    models: Sequence[ChatModelHandle] | None = None,
    embeddings: Embeddings | None = None,
    store: VectorStore | None = None,
) -> FastAPI:
    """Build the app for `settings` (default: the environment). Tests may hand in the chat
    model (or several, in fallback order), the embeddings or the vector store."""
    if model is not None:
        models = [model]
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        components = await build_components(
            settings, models=models, embeddings=embeddings, store=store
        )
        app.state.components = components
        try:
            yield
        finally:
            await components.close()

    app = FastAPI(
        title="ragstream",
        summary="Retrieval-augmented chat that streams its answers over Server-Sent Events.",
        version="0.1.0",
        lifespan=lifespan,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_exception_handler(ServiceError, _service_error)
    for router in (
        health.router,
        auth.router,
        conversations.router,
        chat.router,
        documents.router,
    ):
        app.include_router(router)
    return app
