from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import AnsweringUser, ComponentsDep
from backend.api.schemas import ChatRequest, ChatResponse, MessagePublic
from backend.api.sse import EventStream, relayed_response
from backend.db.models import User
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
    body: ChatRequest, user: AnsweringUser, components: ComponentsDep
) -> EventStream:
    """Answer as Server-Sent Events: meta, sources, token..., then done or error. Token
    events carry ids (characters so far): GET /messages/{id}/stream resumes from one."""
    turn = await _start(components.chat_service, user, body)  # 4xx here, before the stream
    return relayed_response(components, turn, body.options())


@router.post("/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, user: AnsweringUser, components: ComponentsDep) -> ChatResponse:
    """Answer in one JSON response (the same pipeline as /chat/stream)."""
    turn = await _start(components.chat_service, user, body)
    answer = await components.chat_service.complete(turn, components.relay)
    assert turn.conversation_id is not None
    return ChatResponse(
        conversation_id=turn.conversation_id,
        message=MessagePublic.model_validate(answer),
        sources=answer.sources or [],
    )
