"""What a turn searches for. A first question searches for itself; a follow-up that refers
back to the conversation ("does it lower the risk of cancer?") gets a standalone search
query, one of three ways (RETRIEVAL_QUERY, or a request's `retrieval.query`):

- `question`: the question alone, as if it were the first;
- `context`: no model call. The conversation's earlier questions join the question as
  weighted context on both the dense and the keyword side (`HybridRetriever.search`): the
  previous one at RETRIEVAL_CONTEXT_WEIGHT against the question's 1, halved for each
  further back;
- `rewrite`: the model writes the question as one standalone query, within its own
  timeout and token budget; when it is slow, fails or writes nothing usable, `context`.

The default was chosen by measurement (`python -m bench.followups`, docs/retrieval.md)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from backend.common.settings import Settings
from backend.llm import ChatModel
from backend.llm.base import Delta

log = logging.getLogger(__name__)

QueryMode = Literal["question", "context", "rewrite"]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that point back into the conversation, and openings that continue it.
_REFERRING = _words(
    "it its it's itself they them their theirs themselves this that these "
    "those he him his she her hers there such same former latter above "
    "aforementioned"
)
_CONTINUING = ("and ", "also ", "but ", "so ", "then ", "what about", "how about", "what if")
_WORD = re.compile(r"[a-z0-9']+")
_CONTENT_WORDS = 3  # a question with fewer words of its own leans on the conversation
_STOPWORDS = _words(
    "a an the is are was were be been do does did can could should would "
    "will what which who whom whose when where why how of in on at to for "
    "from by with about as or and not no any i you we me my our your more "
    "less"
)

REWRITE_INSTRUCTION = (
    "You turn the last question of a conversation into one standalone search query for a "
    "document search. Replace every pronoun and reference (it, they, this, that) with what "
    "it refers to in the conversation, and keep every detail of the question. Do not answer "
    "it. Write only the query, on one line."
)
_QUOTED_ANSWER_CHARS = 300  # of each earlier answer, in the rewrite prompt
_PREFIX = re.compile(r"^\s*(?:standalone\s+)?(?:search\s+)?(?:query|question)\s*:\s*", re.I)


def refers_back(question: str) -> bool:
    """Whether the question leans on the conversation: a referring word, an opening that
    continues ("and what about…"), or too few words of its own to stand alone."""
    lowered = question.strip().lower()
    words = _WORD.findall(lowered)
    if any(w in _REFERRING for w in words) or lowered.startswith(_CONTINUING):
        return True
    return sum(w not in _STOPWORDS for w in words) < _CONTENT_WORDS


@dataclass
class SearchQuery:
    """What a turn searches for: `text` as shown to the user ("Searched for: …") and
    stored; `context` the weighted earlier questions that join it (the `context` way)."""

    text: str
    mode: QueryMode  # the way actually used (`context` when a rewrite fell back)
    context: list[tuple[str, float]] = field(default_factory=list)
    elapsed_ms: float = 0.0
    searched: str = ""  # the query the retriever gets (`context` joins it); default `text`

    def __post_init__(self) -> None:
        self.searched = self.searched or self.text


class QueryWriter:
    """Makes a turn's search query, the way the settings or the request ask."""

    def __init__(self, settings: Settings) -> None:
        self.default: QueryMode = settings.retrieval_query
        self.weight = settings.retrieval_context_weight
        self.turns = settings.retrieval_context_turns
        self.timeout = settings.retrieval_rewrite_timeout
        self.max_tokens = settings.retrieval_rewrite_max_tokens

    async def query(
        self,
        question: str,
        history: Sequence[tuple[str, str]],
        *,
        mode: QueryMode | None = None,
        model: ChatModel | None = None,
    ) -> SearchQuery:
        """The search query for `question` after `history` ((role, content), oldest first)."""
        started = time.perf_counter()
        chosen = mode or self.default
        earlier = [text for role, text in history if role == "user" and text.strip()]
        found: SearchQuery | None = None
        if chosen == "question" or not earlier or not refers_back(question):
            found = SearchQuery(question, "question")
        elif chosen == "rewrite" and model is not None:
            found = await self._rewrite(question, history, model)
        if found is None:
            found = self.with_context(question, earlier)
        found.elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        return found

    def with_context(self, question: str, earlier: Sequence[str]) -> SearchQuery:
        """The `context` way: the last RETRIEVAL_CONTEXT_TURNS questions, most recent first,
        at weights halving from RETRIEVAL_CONTEXT_WEIGHT."""
        recent = list(reversed(earlier))[: self.turns]
        context = [(text, self.weight / 2**i) for i, text in enumerate(recent)]
        shown = " … ".join([*reversed(recent), question])
        return SearchQuery(shown, "context", context, searched=question)

    def rewrite_prompt(
        self, question: str, history: Sequence[tuple[str, str]]
    ) -> list[BaseMessage]:
        """The rewrite's messages: the instruction, the recent conversation (answers cut
        short), and the question."""
        asked = [i for i, (role, _) in enumerate(history) if role == "user"]
        recent = history[asked[-min(self.turns, len(asked))] :] if asked else history
        lines = []
        for role, text in recent:
            if role == "user":
                lines.append(f"User: {' '.join(text.split())}")
            else:
                said = " ".join(text.split())
                if len(said) > _QUOTED_ANSWER_CHARS:
                    said = said[:_QUOTED_ANSWER_CHARS].rstrip() + "…"
                lines.append(f"Assistant: {said}")
        transcript = "\n".join(lines)
        return [
            SystemMessage(REWRITE_INSTRUCTION),
            HumanMessage(
                f"Conversation:\n{transcript}\n\nLast question: {question}\n\n"
                "Standalone search query:"
            ),
        ]

    async def _rewrite(
        self, question: str, history: Sequence[tuple[str, str]], model: ChatModel
    ) -> SearchQuery | None:
        """The model's standalone query; None when it is slow, fails or writes nothing
        usable (the caller then uses `context`)."""
        messages = self.rewrite_prompt(question, history)
        params = {"max_tokens": self.max_tokens, "temperature": 0.0}
        parts: list[str] = []
        stream = model.stream(messages, params)
        try:
            async with asyncio.timeout(self.timeout):
                async for item in stream:
                    if isinstance(item, Delta):
                        parts.append(item.text)
                        if "\n" in "".join(parts).strip():
                            break  # one line is all it may write
        except TimeoutError:
            log.info("query rewrite by %s took over %.1f s", model.name, self.timeout)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure: the next way serves
            log.warning("query rewrite by %s failed: %s", model.name, exc)
            return None
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:  # its place in a model's line, its connection, freed now
                await close()
        written = usable_query("".join(parts), question)
        if written is None:
            log.info("query rewrite by %s unusable: %r", model.name, "".join(parts)[:200])
            return None
        return SearchQuery(written, "rewrite")


def usable_query(text: str, question: str) -> str | None:
    """The first line of what the model wrote, without a "Query:" label or quotes; None when
    it is empty, far longer than the question could need, or a question mark alone."""
    line = next((line for line in text.strip().splitlines() if line.strip()), "")
    line = _PREFIX.sub("", line).strip().strip("\"'`“”").strip()
    if len(_WORD.findall(line.lower())) < 2:
        return None
    if len(line) > 3 * len(question) + 200:
        return None
    return line
