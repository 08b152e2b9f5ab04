"""What the rest of the backend knows of a chat model: a LangChain chat model plus the
facts the prompt builder and the events need."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel


def approximate_token_count(text: str) -> int:
    """About four characters a token: used only where the model has no tokenizer to ask."""
    return math.ceil(len(text) / 4)


@dataclass
class ChatModelHandle:
    """A ready chat model: `chat` streams, `count_tokens` measures text for the prompt budget."""

    name: str
    provider: str
    chat: BaseChatModel
    context_window: int
    count_tokens: Callable[[str], int] = field(default=approximate_token_count)

    def is_ready(self) -> bool:
        ready = getattr(self.chat, "is_ready", None)
        return bool(ready()) if callable(ready) else True

    def close(self) -> None:
        close = getattr(self.chat, "close", None)
        if callable(close):
            close()
