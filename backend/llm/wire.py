"""The hot loop's model client: OpenAI's streaming chat format spoken directly over httpx.

Every remote model this service calls speaks it: vLLM, Ollama, llama.cpp's server and any
OpenAI-compatible API; TGI's Messages API, Hugging Face dedicated endpoints and the HF
router (which differ only in URL, key and error bodies, see `backend.llm.errors`). The SDKs
(openai, huggingface_hub) build model objects for every chunk and LangChain wraps each again:
measured here at 155 and 266 µs a chunk against 37 µs for httpx and `json.loads`
(docs/models.md). LangChain still builds the prompt; this only carries it.

A stream yields `Delta`s: a piece of text, and at the end the finish reason and usage.
Failures are `ModelFailure`s (from the status and the error body) or httpx's own transport
errors, which `backend.llm.errors.classify` maps like any other client's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import httpx
from langchain_core.messages import BaseMessage

from backend.common.settings import Settings
from backend.llm.base import Delta, Queued, StreamItem
from backend.llm.errors import ModelFailure, from_status

ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
PARAMS = ("max_tokens", "temperature", "top_p", "stop")


def wire_timeout(settings: Settings) -> httpx.Timeout:
    """Reads are bounded by the stream's own first-token / between-token timeouts."""
    read = max(settings.llm_first_token_timeout, settings.llm_token_timeout) + 5
    return httpx.Timeout(read, connect=settings.llm_connect_timeout)


def default_params(settings: Settings) -> dict[str, float | int]:
    """What an answer asks of the model when its request does not say."""
    return {"max_tokens": settings.max_tokens_default, "temperature": settings.temperature_default}


def message_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": ROLES.get(m.type, "user"), "content": m.text} for m in messages]


class ChatWire:
    """Streams chat completions from one `url` (…/chat/completions) for one `model`."""

    # Where requests go when no transport is given: httpx's own (tests route a remote host,
    # the HF router, to a loopback server through it).
    default_transport: ClassVar[httpx.AsyncBaseTransport | None] = None

    def __init__(
        self,
        *,
        url: str,
        model: str,
        api_key: str | None,
        timeout: httpx.Timeout,
        defaults: Mapping[str, Any],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.model = model
        self.defaults = dict(defaults)
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.AsyncClient(
            headers=headers,
            timeout=timeout,
            transport=transport or self.default_transport,
            # One connection per answer in flight: no pool limit (the default 100 would
            # queue the 101st answer), idle ones kept for the next turn.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    def payload(self, messages: list[BaseMessage], params: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": message_dicts(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for name in PARAMS:
            value = params.get(name, self.defaults.get(name))
            if value is not None and value != []:
                body[name] = value
        return body

    async def stream(
        self, messages: list[BaseMessage], params: Mapping[str, Any]
    ) -> AsyncIterator[StreamItem]:
        """The answer's deltas. A server with a waiting line (our own local-model host)
        first sends `{"queue": {"position": n}}` chunks, n = 0 when the turn begins."""
        request = self.http.build_request("POST", self.url, json=self.payload(messages, params))
        response = await self.http.send(request, stream=True)
        try:
            if 300 <= response.status_code < 400:  # never followed (llm/guard.py)
                raise ModelFailure("redirected", detail=f"HTTP {response.status_code}")
            if response.status_code >= 400:
                await response.aread()
                raise from_status(response.status_code, response.headers, _json(response))
            async for data in _events(response):
                if "queue" in data:
                    yield Queued(int(data["queue"]["position"]))
                elif (delta := _delta(data)) is not None:
                    yield delta
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of an SSE body's `data:` lines, until `[DONE]` or the end."""
    rest = b""
    async for block in response.aiter_bytes():
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (pings), `event:`/`id:` fields
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            if payload:
                data = json.loads(payload)
                if isinstance(data, dict):
                    yield data


def _delta(data: dict[str, Any]) -> Delta | None:
    if "error" in data:  # TGI (and some OpenAI-compatible servers) fail mid-stream so
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ModelFailure("upstream", detail=f"error event: {str(message)[:200]}")
    text, finish = "", None
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        finish = choice.get("finish_reason") or finish
    usage = data.get("usage")
    counts = None
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        counts = {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage["completion_tokens"]),
        }
    if not text and finish is None and counts is None:
        return None
    return Delta(text, finish, counts)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
