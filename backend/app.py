"""The FastAPI application: `create_app(settings)` builds it; components live in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from langchain_core.embeddings import Embeddings

from backend.api.routes import auth, chat, conversations, documents, health, openai
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
from backend.metrics import Metrics
from backend.middleware import RequestContextMiddleware
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


OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _openai_error(
    status: int, message: str, *, code: str | None, param: str | None
) -> JSONResponse:
    """OpenAI's error shape, for the /v1 routes."""
    error = {
        "message": message,
        "type": OPENAI_TYPES.get(status, "api_error"),
        "param": param,
        "code": code,
    }
    return JSONResponse({"error": error}, status_code=status)


def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = next((code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind)), 400)
    if request.url.path.startswith("/v1/"):
        param = ".".join(str(p) for p in exc.field[1:]) if exc.field else None
        code = exc.code or ("invalid_api_key" if status == 401 else None)
        # OpenAI answers a bad parameter with 400, where the native API says 422.
        return _openai_error(400 if status == 422 else status, exc.detail, code=code, param=param)
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
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        components = await build_components(
            settings, models=models, embeddings=embeddings, store=store, metrics=metrics
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
    app.state.metrics = metrics
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_exception_handler(ServiceError, _service_error)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if not request.url.path.startswith("/v1/"):
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:])
        return _openai_error(400, f"{param}: {first['msg']}", code="invalid_value", param=param)

    app.add_exception_handler(RequestValidationError, validation_error)
    for router in (
        health.router,
        auth.router,
        conversations.router,
        conversations.messages_router,
        chat.router,
        documents.router,
        openai.router,
    ):
        app.include_router(router)
    return app
