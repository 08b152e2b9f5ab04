"""A loopback model server for tests, speaking the OpenAI-compatible streaming chat format
(`POST /v1/chat/completions`, as TGI's Messages API, vLLM, Ollama and the HF router do),
with TGI's or OpenAI's error bodies. Each request takes the next scripted `Scenario`."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Scenario:
    status: int = 200
    error: str = "error"  # message of an error body
    error_type: str | None = None  # TGI's error_type / OpenAI's type
    estimated_time: float | None = None  # TGI's 503 "model loading"
    headers: dict[str, str] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " upstream", "."])
    delay_first: float = 0.0  # seconds before the first token
    delay_between: float = 0.0
    stall_after: int | None = None  # after N tokens, go silent for `stall_seconds`
    stall_seconds: float = 10.0
    error_after: int | None = None  # after N tokens, an SSE payload with "error"
    cut_after: int | None = None  # after N tokens, drop the connection
    finish_reason: str = "stop"


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


class Upstream:
    def __init__(self, flavour: Literal["tgi", "openai"] = "tgi") -> None:
        self.flavour = flavour
        self.scenarios: deque[Scenario] = deque()
        self.default = Scenario()
        self.seen: list[Seen] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    def script(self, *scenarios: Scenario) -> None:
        self.scenarios.extend(scenarios)

    def _error_body(self, s: Scenario) -> dict[str, Any]:
        if self.flavour == "openai":
            return {
                "error": {"message": s.error, "type": s.error_type or "error", "code": s.status}
            }
        body: dict[str, Any] = {"error": s.error, "error_type": s.error_type or "generation"}
        if s.estimated_time is not None:
            body["estimated_time"] = s.estimated_time
        return body

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(Seen(request.url.path, body, dict(request.headers), time.monotonic()))
        s = self.scenarios.popleft() if self.scenarios else self.default
        if s.status != 200:
            return JSONResponse(self._error_body(s), status_code=s.status, headers=s.headers)
        model = body.get("model", "unknown")
        if not body.get("stream"):
            text = "".join(s.tokens)
            return JSONResponse(
                {
                    "id": "cmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": s.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 11,
                        "completion_tokens": len(s.tokens),
                        "total_tokens": 11 + len(s.tokens),
                    },
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._events(s, model, include_usage), media_type="text/event-stream"
        )

    async def _events(self, s: Scenario, model: str, include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": "chunk-test",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        if s.delay_first:
            await asyncio.sleep(s.delay_first)
        for i, token in enumerate(s.tokens):
            if i == s.stall_after:
                await asyncio.sleep(s.stall_seconds)
            if i == s.error_after:
                error = self._error_body(
                    Scenario(error="Request failed during generation: CUDA OOM")
                )
                yield f"data: {json.dumps(error)}\n\n".encode()
                return
            if i == s.cut_after:
                raise ConnectionResetError("the test upstream drops the connection")
            delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
            yield chunk(delta)
            if s.delay_between:
                await asyncio.sleep(s.delay_between)
        yield chunk({}, s.finish_reason)
        if include_usage:
            usage = {
                "prompt_tokens": 11,
                "completion_tokens": len(s.tokens),
                "total_tokens": 11 + len(s.tokens),
            }
            payload = {
                "id": "chunk-test",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(payload)}\n\n".encode()
        yield b"data: [DONE]\n\n"
