from __future__ import annotations

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from backend.api.deps import ChatServiceDep, CurrentUser, SettingsDep
from backend.api.sse import sse_response
from backend.db.models import User
from backend.schemas import ChatRequest, ChatResponse, MessagePublic
from backend.services.chat import ChatService
from backend.services.turns import ChatTurn

router = APIRouter(tags=["chat"])


async def _start(service: ChatService, user: User, body: ChatRequest) -> ChatTurn:
    return await service.start(
        user=user,
        message=body.message,
        conversation_id=body.conversation_id,
        options=body.options(),
    )


@router.post("/chat/stream")
async def chat_stream(
    body: ChatRequest, user: CurrentUser, service: ChatServiceDep, settings: SettingsDep
) -> EventSourceResponse:
    """Answer as Server-Sent Events: meta, sources, token..., then done or error."""
    turn = await _start(service, user, body)  # 4xx here, before the stream opens
    return sse_response(service.answer(turn), settings)


@router.post("/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, user: CurrentUser, service: ChatServiceDep) -> ChatResponse:
    """Answer in one JSON response (the same pipeline as /chat/stream)."""
    turn = await _start(service, user, body)
    answer = await service.complete(turn)
    assert turn.conversation_id is not None
    return ChatResponse(
        conversation_id=turn.conversation_id,
        message=MessagePublic.model_validate(answer),
        sources=answer.sources or [],
    )
