from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from backend.api.deps import ChatServiceDep, CurrentUser, SettingsDep
from backend.db.models import User
from backend.errors import UpstreamFailed
from backend.schemas import ChatRequest, ChatResponse, MessagePublic
from backend.services.chat import (
    ChatEvent,
    ChatOptions,
    ChatService,
    ChatTurn,
    RetrievalOptions,
)
from backend.settings import Settings

router = APIRouter(tags=["chat"])


async def _start(service: ChatService, user: User, body: ChatRequest) -> ChatTurn:
    return await service.start(
        user=user,
        message=body.message,
        conversation_id=body.conversation_id,
        options=ChatOptions(
            model=body.model,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            retrieval=RetrievalOptions(**body.retrieval.model_dump()),
        ),
    )


async def _sse(events: AsyncIterator[ChatEvent]) -> AsyncIterator[ServerSentEvent]:
    async for event in events:
        yield ServerSentEvent(data=json.dumps(event.data, ensure_ascii=False), event=event.event)


@router.post("/chat/stream")
async def chat_stream(
    body: ChatRequest, user: CurrentUser, service: ChatServiceDep, settings: SettingsDep
) -> EventSourceResponse:
    """Answer as Server-Sent Events: meta, sources, token..., then done or error."""
    turn = await _start(service, user, body)  # 4xx here, before the stream opens
    return sse_response(turn, settings)


def sse_response(turn: ChatTurn, settings: Settings) -> EventSourceResponse:
    """A turn's events as Server-Sent Events, with keep-alive pings."""
    return EventSourceResponse(
        _sse(turn.events()),
        ping=settings.sse_ping_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, user: CurrentUser, service: ChatServiceDep) -> ChatResponse:
    """Answer in one JSON response (the same pipeline as /chat/stream)."""
    turn = await _start(service, user, body)
    answer = await service.complete(turn)
    if answer.status == "error":
        raise UpstreamFailed(answer.error or "the model failed")
    return ChatResponse(
        conversation_id=turn.conversation_id,
        message=MessagePublic.model_validate(answer),
        sources=answer.sources or [],
    )
