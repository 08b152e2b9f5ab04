"""Server-Sent Events: an answer's events as named events with JSON data, sent by a lean
ASGI response (`EventStream`): one `send` per event, a comment line as keep-alive when
the stream is quiet, and the events' generator closed the moment the client leaves.

sse-starlette's `EventSourceResponse` did the same with a timed send, a lock and a task
switch per event: a third of the service's own time per token under load (profiled with
py-spy, docs/models.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from backend.common.settings import Settings
from backend.services.events import AnswerEvent

PING = b": ping\n\n"
_json = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(…, ensure_ascii=False)
# would build an encoder for every event


def event_frame(event: AnswerEvent) -> bytes:
    """`id: …` (when it has one), `event: …` and `data: <json>` (JSON has no newlines)."""
    lines = "" if event.id is None else f"id: {event.id}\n"
    lines += f"event: {event.name}\n"
    return (lines + "data: " + _json(event.data()) + "\n\n").encode()


def data_frame(data: str) -> bytes:
    """An unnamed event (OpenAI's streams)."""
    return ("data: " + data + "\n\n").encode()


def _as_is(frame: bytes) -> bytes:
    return frame


class EventStream(Response):
    """A `text/event-stream` response: each of `events`, made a frame by `encode` (by
    default they are frames already), sent as it comes."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[Any, None],
        *,
        ping_seconds: float,
        encode: Callable[[Any], bytes] = _as_is,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # No body and so no Content-Length (as Starlette's StreamingResponse sets them up).
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        )
        self.events = events
        self.encode = encode
        self.ping_seconds = ping_seconds
        self.sent = 0  # frames sent so far: the keep-alive's clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch, receive, group.cancel_scope)
                if self.ping_seconds > 0:
                    group.start_soon(self._keep_alive, send)
                encode = self.encode
                async for event in self.events:
                    body = encode(event)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    self.sent += 1
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()

    @staticmethod
    async def _watch(receive: Receive, scope: anyio.CancelScope) -> None:
        """The client left: stop sending (the events' generator is closed)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _keep_alive(self, send: Send) -> None:
        """A comment line after `ping_seconds` without a frame (proxies close idle streams)."""
        seen = -1
        while True:
            await anyio.sleep(self.ping_seconds)
            if self.sent == seen:
                await send({"type": "http.response.body", "body": PING, "more_body": True})
            seen = self.sent


def sse_response(events: AsyncGenerator[AnswerEvent, None], settings: Settings) -> EventStream:
    """`events` as Server-Sent Events, with keep-alive pings."""
    return EventStream(events, encode=event_frame, ping_seconds=settings.sse_ping_seconds)


__all__ = ["EventStream", "data_frame", "event_frame", "sse_response"]
