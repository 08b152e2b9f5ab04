"""OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions` (streamed or not),
in OpenAI's wire format so the official SDK, LangChain's ChatOpenAI and OpenAI chat UIs
work unchanged. Extensions in the body: `retrieval` (as in /chat) and `conversation_id`
(store the exchange in that conversation); in the answer: `sources` (and
`conversation_id`) on the last chunk / the response."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from backend.api.deps import (
    AnsweringUser,
    ChatServiceDep,
    CurrentUser,
    ModelsDep,
    SettingsDep,
    UserModelsDep,
)
from backend.api.schemas import GenerationOptions
from backend.api.sse import EventStream, data_frame
from backend.common.errors import InvalidInput, NotFound
from backend.services.answer import Answer
from backend.services.events import AnswerEvent, Done, Error, Meta, Token
from backend.services.turns import ChatOptions

router = APIRouter(prefix="/v1", tags=["openai"])
STARTED = int(time.time())


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(GenerationOptions):
    """The generation options of /chat, in OpenAI's spelling."""

    # OpenAI clients send parameters this service has no use for (presence_penalty,
    # logit_bias, user, ...): they are accepted and ignored, as many compatible servers do.
    model_config = ConfigDict(extra="allow")

    model: str  # required here: OpenAI's clients always send it
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None  # type: ignore[assignment]  # OpenAI allows one string
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    conversation_id: str | None = None

    def options(self) -> ChatOptions:
        options = super().options()
        options.stop = [self.stop] if isinstance(self.stop, str) else self.stop
        options.max_tokens = self.max_completion_tokens or self.max_tokens
        options.on_disconnect = "stop"  # a client that leaves stops the answer, as OpenAI's does
        return options


@router.get("/models")
async def list_models(user_models: UserModelsDep, user: CurrentUser) -> dict[str, Any]:
    """The models the caller may choose (their own model key's first), as OpenAI lists them."""
    return {
        "object": "list",
        "data": [
            {"id": h.name, "object": "model", "created": STARTED, "owned_by": h.provider}
            for h in await user_models.available(user)
        ],
    }


def _split(messages: list[OpenAIMessage]) -> tuple[str | None, list[tuple[str, str]], str]:
    """(system prompt, history, question) from an OpenAI message list."""
    if messages[-1].role != "user" or not messages[-1].text().strip():
        raise InvalidInput("the last message must be a non-empty user message", field=("messages",))
    system = "\n\n".join(m.text() for m in messages if m.role in ("system", "developer"))
    history = [
        ("user" if m.role == "user" else "assistant", m.text())
        for m in messages[:-1]
        if m.role in ("user", "assistant") and m.text()
    ]
    return system or None, history, messages[-1].text()


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    user: AnsweringUser,
    service: ChatServiceDep,
    models: ModelsDep,
    settings: SettingsDep,
) -> JSONResponse | EventStream:
    """Chat completion in OpenAI's format, grounded in your documents."""
    if body.model not in models.by_id:  # OpenAI's answer: 404 model_not_found
        raise NotFound(
            f"The model '{body.model}' does not exist; GET /v1/models lists the models",
            field=("model",),
            code="model_not_found",
        )
    system, history, question = _split(body.messages)
    if system and settings.client_system_prompt == "append":
        # The operator's instruction holds; the client's comes after it, not instead.
        system = f"{settings.system_prompt}\n\n{system}"
    turn = await service.start(
        user=user,
        message=question,
        conversation_id=body.conversation_id,
        options=body.options(),
        history=history,
        system_prompt=system,
        persist=body.conversation_id is not None,
    )
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(turn.answer, service.stream(turn), include_usage)
        return EventStream(chunks, ping_seconds=settings.sse_ping_seconds)
    return JSONResponse(_completion(await service.complete(turn)))


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _extensions(answer: Answer) -> dict[str, Any]:
    extra: dict[str, Any] = {"sources": answer.sources}
    if answer.conversation_id:
        extra["conversation_id"] = answer.conversation_id
    return extra


def _completion(answer: Answer) -> dict[str, Any]:
    prompt, completion = answer.prompt_tokens or 0, answer.completion_tokens or 0
    return {
        "id": f"chatcmpl-{answer.message_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "logprobs": None,
                "finish_reason": _finish_reason(answer.finish_reason),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        **_extensions(answer),
    }


async def _chunks(
    answer: Answer, events: AsyncGenerator[AnswerEvent, None], include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The answer's events as OpenAI's chunks (a `status` event has no counterpart there)."""
    base = {
        "id": f"chatcmpl-{answer.message_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data_frame(json.dumps({**base, "choices": [choice], **extra}))

    try:
        async for event in events:
            match event:
                case Meta():
                    base["model"] = event.model or ""
                    yield chunk({"role": "assistant", "content": ""})
                case Token():
                    yield chunk({"content": event.text})
                case Done():
                    finish = _finish_reason(event.finish_reason)
                    yield chunk({}, finish, **_extensions(answer))
                    if include_usage:
                        usage = event.usage
                        total = (usage["prompt_tokens"] or 0) + (usage["completion_tokens"] or 0)
                        usage_chunk = {
                            **base,
                            "choices": [],
                            "usage": {**usage, "total_tokens": total},
                        }
                        yield data_frame(json.dumps(usage_chunk))
                    yield data_frame("[DONE]")
                case Error():
                    # OpenAI's streams carry errors as an `error` object; the SDK raises on it.
                    error = {"message": event.message, "type": "api_error", "code": event.code}
                    yield data_frame(json.dumps({"error": error}))
                    return
    finally:
        await events.aclose()
