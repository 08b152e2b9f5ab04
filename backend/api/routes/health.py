from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.api.deps import ComponentsDep, CurrentUser
from backend.schemas import ModelInfo, ModelsPublic

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(components: ComponentsDep) -> JSONResponse:
    """Readiness: the database answers and the model is loaded (503 otherwise)."""
    database = await components.database_ok()
    model = components.model.is_ready()
    body = {
        "status": "ready" if database and model else "not ready",
        "database": "ok" if database else "unreachable",
        "model": {
            "name": components.model.name,
            "provider": components.model.provider,
            "loaded": model,
        },
    }
    return JSONResponse(body, status_code=200 if database and model else 503)


@router.get("/models", response_model=ModelsPublic)
async def models(components: ComponentsDep, _user: CurrentUser) -> ModelsPublic:
    """Models a user may choose for /chat."""
    model = components.model
    return ModelsPublic(
        data=[
            ModelInfo(
                id=model.name,
                provider=model.provider,
                context_window=model.context_window,
                default=True,
            )
        ]
    )
