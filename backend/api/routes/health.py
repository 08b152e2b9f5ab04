from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from backend.api.deps import CurrentUser, DatabaseOk, ModelsDep, SettingsDep, UserModelsDep
from backend.api.schemas import ModelInfo, ModelsPublic
from backend.llm.own_key import OwnKeyModel

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    registry = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(database: DatabaseOk, models: ModelsDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: the database answers and the models are loaded (503 otherwise)."""
    loaded = models.is_ready()
    body = {
        "status": "ready" if database and loaded else "not ready",
        "worker": os.getpid(),  # which of `python -m backend`'s processes answered
        "database": "ok" if database else "unreachable",
        "vector_store": settings.resolved_vector_store,
        "model": {
            "name": models.default.name,
            "provider": models.default.provider,
            "loaded": loaded,
        },
        "models": [{"name": m.name, "provider": m.provider} for m in models.models],
    }
    return JSONResponse(body, status_code=200 if database and loaded else 503)


@router.get("/models", response_model=ModelsPublic)
async def models(user_models: UserModelsDep, user: CurrentUser) -> ModelsPublic:
    """Models the user may choose for /chat, the default first: their own model key's
    (`own_key`), then the operator's."""
    available = await user_models.available(user)
    return ModelsPublic(
        data=[
            ModelInfo(
                id=m.name,
                provider=m.provider,
                context_window=m.context_window,
                default=i == 0,
                own_key=isinstance(m, OwnKeyModel),
            )
            for i, m in enumerate(available)
        ]
    )
