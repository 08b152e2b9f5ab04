"""What the rest of the backend knows of a chat model: one protocol (`ChatModel`), whatever
serves it. Its implementations are chosen once, from the settings (`backend.llm`):

- `RemoteModel` (llm/remote.py): Hugging Face or any OpenAI-compatible server, streamed
  over the wire (llm/wire.py);
- `LocalModel` (llm/local.py): the bundled SmolLM2 in this process, one answer at a time
  behind its waiting line (`QueuedModel`, llm/queue.py);
- `SharedLocalModel` (llm/shared.py): a worker's view of the local model that the workers
  share (llm/host.py), streamed over the wire, its line asked before an answer starts;
- `LangChainModel` (here): any LangChain chat model through its `astream` (tests' fakes).

A model's stream yields `Delta`s (text, and at the end the finish reason and usage) and,
from a model with a waiting line, `Queued` items first: the answer's place in the line,
then position 0 when its turn begins."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage


def approximate_token_count(text: str) -> int:
    """About four characters a token: used only where the model has no tokenizer to ask."""
    return math.ceil(len(text) / 4)


@dataclass(slots=True)
class Delta:
    """One step of a streamed answer: `text` (may be empty), and on the last steps the
    finish reason and the model's own token counts."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None  # prompt_tokens, completion_tokens


@dataclass(slots=True)
class Queued:
    """The answer waits for a busy model: `position` 1 is next; 0: its turn has begun."""

    position: int


StreamItem = Delta | Queued


PromptStyle = Literal["full", "compact"]  # how its prompt is laid out (services/prompt.py)


class ChatModel(Protocol):
    name: str  # as requests and `meta` name it
    provider: str
    context_window: int  # tokens it sees, prompt and answer
    prompt: PromptStyle

    @property
    def chat(self) -> BaseChatModel:
        """The LangChain chat model it is (or that describes it), for LangChain users."""
        ...

    @property
    def queued(self) -> bool:
        """Whether answers may wait for it (their first-token clock starts at their turn)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    async def admit(self) -> None:
        """Raise ModelBusy when no answer may join its waiting line now."""

    def stream(
        self, messages: list[BaseMessage], params: Mapping[str, Any]
    ) -> AsyncIterator[StreamItem]:
        """The answer's `Queued` items (a model with a waiting line), then its deltas."""
        ...

    def is_ready(self) -> bool: ...

    async def aclose(self) -> None: ...


@dataclass
class LangChainModel:
    """Any LangChain chat model, streamed through its `astream`."""

    name: str
    provider: str
    chat: BaseChatModel
    context_window: int
    counter: Callable[[str], int] = field(default=approximate_token_count)
    prompt: PromptStyle = field(default="full", kw_only=True)

    @property
    def queued(self) -> bool:
        return False

    def count_tokens(self, text: str) -> int:
        return self.counter(text)

    async def admit(self) -> None:
        return None

    def stream(
        self, messages: list[BaseMessage], params: Mapping[str, Any]
    ) -> AsyncIterator[StreamItem]:
        return _deltas(self.chat.astream(messages, **params))

    def is_ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


async def _deltas(chunks: AsyncIterator[Any]) -> AsyncIterator[StreamItem]:
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
