"""Steps 1-5 of a chat turn, written into its `Answer`: retrieve context (for a follow-up,
by its standalone search query: services/query.py), build the prompt
within the token budget, open the first model that starts answering (the fallbacks in
order), stream its tokens, and end the answer (stored, counted) before its readers see the
end. Knows nothing of HTTP, nor of who reads the answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from backend.common.settings import Settings
from backend.llm import ChatModel
from backend.llm.base import PromptStyle
from backend.llm.errors import ModelFailure
from backend.llm.streaming import ModelStream, StreamPolicy, open_stream
from backend.retrieval.passage import Passage
from backend.services.answer import Answer, AnswerObserver
from backend.services.documents import DocumentService
from backend.services.prompt import (
    COMPACT_STOP,
    BuiltPrompt,
    build_compact_prompt,
    build_prompt,
    history_messages,
    with_instruction,
)
from backend.services.query import QueryWriter
from backend.services.turns import ChatTurn

log = logging.getLogger(__name__)


@dataclass
class _Progress:
    """What the pipeline knows of an answer beyond the answer itself: the model that
    answers (or was tried last) and the token counts, the model's own and the prompt's."""

    model: ChatModel
    reported: dict[str, int] | None = None  # usage as the model reported it
    counted_prompt_tokens: int = 0  # as the prompt builder counted it

    def usage(self, text: str) -> tuple[int | None, int | None]:
        """The model's own counts, else the prompt builder's and the tokenizer's."""
        if self.reported:
            return self.reported.get("prompt_tokens"), self.reported.get("completion_tokens")
        return self.counted_prompt_tokens, self.model.count_tokens(text) if text else 0


class AnswerPipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        documents: DocumentService,
        observers: Sequence[AnswerObserver] = (),
    ) -> None:
        self.documents = documents
        self.observers = list(observers)  # told of the first token and the end, in order
        self.policy = StreamPolicy.from_settings(settings)
        self.context_share = settings.context_share
        self.queries = QueryWriter(settings)

    async def run(self, turn: ChatTurn) -> None:
        """Answer the turn into `turn.answer`, to its end (`done` or `error`). Cancelled (its
        reader left, or it was stopped), it ends `interrupted`, its text so far kept."""
        answer = turn.answer
        progress = _Progress(turn.models[0])
        try:
            stream = await self._begin(turn, progress)
            if stream is not None:
                await self._stream(stream, answer, progress)
        except asyncio.CancelledError:
            answer.interrupt()
            with anyio.CancelScope(shield=True):  # anyio re-cancels any other await here
                await self._end(answer, progress)
            raise
        await self._end(answer, progress)

    # --- 1. retrieve ------------------------------------------------------------------------
    async def _retrieve(self, turn: ChatTurn) -> list[Passage] | None:
        """The passages found for the turn's search query (a follow-up's standalone one;
        none with retrieval off; a revision's are those of the answer it revises); None,
        and the answer failed, when the search failed."""
        answer = turn.answer
        if turn.passages is not None:
            return turn.passages
        if not turn.retrieval.enabled:
            return []
        started = time.perf_counter()
        try:
            query = await self.queries.query(
                turn.question, turn.history, mode=turn.retrieval.query, model=turn.models[0]
            )
            answer.search_query, answer.query_ms = query.text, query.elapsed_ms
            found = await self.documents.search(
                user=turn.user,
                query=query.searched,
                scopes=turn.retrieval.namespaces,
                filter_=turn.retrieval.filter,
                top_k=turn.retrieval.top_k,
                alpha=turn.retrieval.alpha,
                group_by=turn.retrieval.group_by,
                context=query.context,
                rerank=turn.retrieval.rerank is not False,
            )
        except Exception:
            log.exception("retrieval failed")
            answer.fail("retrieval_error", "Searching the documents failed; please try again.")
            return None
        finally:
            answer.retrieval_ms = (time.perf_counter() - started) * 1000
        return found.passages

    # --- 2. prompt --------------------------------------------------------------------------
    def _prompt(self, turn: ChatTurn, model: ChatModel, passages: list[Passage]) -> BuiltPrompt:
        common = {
            "history": history_messages(turn.history),
            "question": turn.question,
            "count_tokens": model.count_tokens,
            "budget": model.context_window - turn.params["max_tokens"],
            "passages": [(p.text, _title_of(p)) for p in passages],
            "context_share": self.context_share,
            "revisions": [(r.answer, r.feedback) for r in turn.revisions],
        }
        if self._style(turn, model) == "compact":
            return build_compact_prompt(
                system=turn.system_prompt, instruction=turn.instruction, **common
            )
        return build_prompt(system=with_instruction(turn.system_prompt, turn.instruction), **common)

    @staticmethod
    def _style(turn: ChatTurn, model: ChatModel) -> PromptStyle:
        return turn.prompt or model.prompt

    @staticmethod
    def _params(turn: ChatTurn, model: ChatModel) -> dict[str, Any]:
        """The request's parameters; a compact prompt's stop sequences joined to its own."""
        if AnswerPipeline._style(turn, model) != "compact":
            return turn.params
        stop = list(dict.fromkeys([*(turn.params.get("stop") or []), *COMPACT_STOP]))
        return {**turn.params, "stop": stop}

    # --- 3. the first model that starts answering ----------------------------------------
    async def _open(
        self, turn: ChatTurn, passages: list[Passage], progress: _Progress
    ) -> tuple[ModelStream, BuiltPrompt] | None:
        answer = turn.answer
        failure: ModelFailure | None = None
        for model in turn.models:
            progress.model = model
            prompt = self._prompt(turn, model, passages)
            try:
                stream = await open_stream(
                    model, prompt.messages, self._params(turn, model), self.policy,
                    answer.wait_in_line,
                )  # fmt: skip
                return stream, prompt
            except ModelFailure as exc:
                failure = exc
                log.warning("model %s unavailable: %s", model.name, exc)
                answer.model = model.name
                if not exc.fallback:
                    break
        assert failure is not None
        answer.fail(failure.code, failure.user_message())
        return None

    async def _begin(self, turn: ChatTurn, progress: _Progress) -> ModelStream | None:
        """Steps 1-3; None (and the answer failed) if no model starts answering."""
        passages = await self._retrieve(turn)
        if passages is None:
            return None
        opened = await self._open(turn, passages, progress)
        if opened is None:
            return None
        stream, prompt = opened
        progress.counted_prompt_tokens = prompt.prompt_tokens
        turn.answer.begin(
            stream.model.name, [p.as_source() for p in passages[: prompt.sources_used]]
        )
        return stream

    # --- 4. stream its tokens (this loop runs once per token) ------------------------------
    async def _stream(self, stream: ModelStream, answer: Answer, progress: _Progress) -> None:
        try:
            async for delta in stream.deltas():
                if delta.usage is not None:
                    progress.reported = delta.usage
                if delta.finish_reason is not None:
                    answer.finish_reason = delta.finish_reason
                if delta.text and answer.add(delta.text):  # the first: saved from now on
                    for observer in self.observers:
                        observer.began(answer)
        except ModelFailure as exc:
            log.warning("model %s failed mid-answer: %s", stream.model.name, exc)
            answer.fail(exc.code, exc.user_message())
        except Exception:
            log.exception("model %s failed mid-answer", stream.model.name)
            answer.fail("model_error", "The model failed while answering; please try again.")

    # --- 5. the end: stored and counted, then its readers see it ---------------------------
    async def _end(self, answer: Answer, progress: _Progress) -> None:
        prompt_tokens, completion_tokens = progress.usage(answer.text)
        answer.conclude(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        for observer in self.observers:
            await observer.ended(answer)
        answer.close()


def _title_of(passage: Passage) -> str | None:
    title = passage.metadata.get("title") or passage.metadata.get("source")
    return str(title) if title else None
