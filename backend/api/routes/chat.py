from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import AnsweringUser, ChatServiceDep, SettingsDep
from backend.api.schemas import ChatRequest, ChatResponse, MessagePublic
from backend.api.sse import EventStream, sse_response

router = APIRouter(tags=["chat"])


@router.post("/chat/stream")
async def chat_stream(
    body: ChatRequest, user: AnsweringUser, service: ChatServiceDep, settings: SettingsDep
) -> EventStream:
    """Answer as Server-Sent Events: status (while it waits for a busy model), meta, sources,
    token..., then done or error. Token events carry ids (characters so far): GET
    /messages/{id}/stream resumes from one."""
    turn = await service.start(  # 4xx here, before the stream
        user=user,
        message=body.message,
        conversation_id=body.conversation_id,
        options=body.options(),
    )
    return sse_response(service.stream(turn), settings)


@router.post("/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, user: AnsweringUser, service: ChatServiceDep) -> ChatResponse:
    """Answer in one JSON response (the same pipeline as /chat/stream)."""
    turn = await service.start(
        user=user,
        message=body.message,
        conversation_id=body.conversation_id,
        options=body.options(),
    )
    answer = await service.complete(turn)
    assert answer.conversation_id is not None
    return ChatResponse(
        conversation_id=answer.conversation_id,
        message=MessagePublic.of_answer(answer),
        sources=answer.sources,
        search_query=answer.search_query,
    )
