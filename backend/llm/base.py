"""What the rest of the backend knows of a chat model: a LangChain chat model plus the
facts the prompt builder and the events need, and how its answers are streamed."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from backend.llm.queue import ModelQueue, OnQueued
from backend.llm.wire import ChatWire, Delta


def approximate_token_count(text: str) -> int:
    """About four characters a token: used only where the model has no tokenizer to ask."""
    return math.ceil(len(text) / 4)


@dataclass
class ChatModelHandle:
    """A ready chat model: `stream` answers, `count_tokens` measures text for the prompt
    budget. A remote model streams over `wire` (the hot loop's own client); any other
    LangChain chat model through its `astream`."""

    name: str
    provider: str
    chat: BaseChatModel
    context_window: int
    count_tokens: Callable[[str], int] = field(default=approximate_token_count)
    wire: ChatWire | None = None
    # A model that answers one at a time: its waiting line, here (`queue`) or in the
    # local-model process the workers share (asked by `check_queue`, streamed over a wire).
    queue: ModelQueue | None = None
    check_queue: Callable[[], Awaitable[None]] | None = None

    @property
    def queued(self) -> bool:
        return self.queue is not None or self.check_queue is not None

    async def admit(self) -> None:
        """Raise ModelBusy when the waiting line is full (before an answer is started)."""
        if self.queue is not None:
            self.queue.check()
        elif self.check_queue is not None:
            await self.check_queue()

    def stream(
        self,
        messages: list[BaseMessage],
        params: Mapping[str, Any],
        on_queued: OnQueued | None = None,
    ) -> AsyncIterator[Delta]:
        """The answer's deltas; a queued model first reports the waiting (`on_queued`,
        then a delta with `admitted`)."""
        if self.wire is not None:
            return self.wire.stream(messages, params, on_queued)
        deltas = _deltas(self.chat.astream(messages, **params))
        return deltas if self.queue is None else _in_turn(self.queue, deltas, on_queued)

    def is_ready(self) -> bool:
        ready = getattr(self.chat, "is_ready", None)
        return bool(ready()) if callable(ready) else True

    async def aclose(self) -> None:
        if self.wire is not None:
            await self.wire.aclose()
        close = getattr(self.chat, "close", None)
        if callable(close):
            close()


async def _deltas(chunks: AsyncIterator[Any]) -> AsyncIterator[Delta]:
    """LangChain's `AIMessageChunk`s as deltas."""
    try:
        async for chunk in chunks:
            usage = chunk.usage_metadata
            yield Delta(
                chunk.text,
                chunk.response_metadata.get("finish_reason"),
                {
                    "prompt_tokens": usage["input_tokens"],
                    "completion_tokens": usage["output_tokens"],
                }
                if usage
                else None,
            )
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _in_turn(
    queue: ModelQueue, deltas: AsyncIterator[Delta], on_queued: OnQueued | None
) -> AsyncIterator[Delta]:
    try:
        async with queue.turn(on_queued):
            yield Delta(admitted=True)
            async for delta in deltas:
                yield delta
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
