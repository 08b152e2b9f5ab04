"""An answer's events as Server-Sent Events: named events with JSON data, keep-alive pings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent

from backend.services.turns import ChatEvent
from backend.settings import Settings


async def _frames(events: AsyncIterator[ChatEvent]) -> AsyncIterator[ServerSentEvent]:
    async for event in events:
        yield ServerSentEvent(data=json.dumps(event.data, ensure_ascii=False), event=event.event)


def sse_response(events: AsyncIterator[ChatEvent], settings: Settings) -> EventSourceResponse:
    """`events` as Server-Sent Events, with keep-alive pings."""
    return EventSourceResponse(
        _frames(events),
        ping=settings.sse_ping_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
