"""An answer's events as Server-Sent Events: named events with JSON data, keep-alive pings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent

from backend.components import Components
from backend.services.turns import ChatEvent, ChatOptions, ChatTurn
from backend.settings import Settings


async def _frames(events: AsyncIterator[ChatEvent]) -> AsyncIterator[ServerSentEvent]:
    async for event in events:
        yield ServerSentEvent(
            data=json.dumps(event.data, ensure_ascii=False),
            event=event.event,
            id=None if event.id is None else str(event.id),
        )


def relayed_response(
    components: Components, turn: ChatTurn, options: ChatOptions
) -> EventSourceResponse:
    """Generate the turn's answer in the relay and stream it to this reader."""
    settings = components.settings
    answer = components.relay.start(
        components.chat_service.answer(turn),
        message_id=turn.assistant_message_id,
        user_id=turn.user.id,
        on_disconnect=options.on_disconnect or settings.stream_disconnect,
    )
    return sse_response(answer.follow(), settings)


def sse_response(events: AsyncIterator[ChatEvent], settings: Settings) -> EventSourceResponse:
    """`events` as Server-Sent Events, with keep-alive pings."""
    return EventSourceResponse(
        _frames(events),
        ping=settings.sse_ping_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
