"""The floor for this stack: a bare relay of an OpenAI-compatible upstream as SSE `token`
events (FastAPI + sse-starlette + httpx; no auth, no database, no LangChain). Not part of
the product: the benchmarks run it beside the service to measure what the service adds.

    python -m bench.bare_relay UPSTREAM_URL PORT
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request
from sse_starlette import EventSourceResponse, ServerSentEvent


def relay_app(upstream: str) -> FastAPI:
    app = FastAPI()
    http = httpx.AsyncClient(
        base_url=upstream, timeout=120, limits=httpx.Limits(max_connections=None)
    )

    async def tokens(body: dict) -> AsyncIterator[ServerSentEvent]:
        request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": body["message"]}],
                   "max_tokens": body.get("max_tokens", 256)}  # fmt: skip
        async with http.stream("POST", "/v1/chat/completions", json=request) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[5:])["choices"]:
                    if text := choice["delta"].get("content"):
                        yield ServerSentEvent(data=json.dumps({"text": text}), event="token")
        yield ServerSentEvent(data="{}", event="done")

    @app.post("/chat/stream")
    async def chat(request: Request) -> EventSourceResponse:
        return EventSourceResponse(tokens(await request.json()))

    return app


if __name__ == "__main__":
    uvicorn.run(
        relay_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning"
    )
