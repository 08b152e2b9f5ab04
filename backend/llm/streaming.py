"""Streaming from a model with time limits and retries.

Before the first token, a retryable failure (429, 503 loading, overload, no connection,
no first token in time) is retried with exponential backoff and jitter, honouring the
provider's Retry-After / estimated_time up to a ceiling. After the first token nothing is
retried: a failure ends the answer (what was said is kept by the caller).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage

from backend.common.settings import Settings
from backend.llm.base import ChatModel, Delta, Queued, StreamItem
from backend.llm.errors import ModelFailure, classify

log = logging.getLogger(__name__)


OnQueued = Callable[[int], None]  # told an answer's place in a busy model's line


@dataclass
class StreamPolicy:
    """Time limits and retries (LLM_FIRST_TOKEN_TIMEOUT, LLM_TOKEN_TIMEOUT, LLM_MAX_RETRIES,
    LLM_RETRY_BASE_SECONDS, LLM_RETRY_MAX_WAIT_SECONDS)."""

    first_token_timeout: float
    token_timeout: float
    max_retries: int
    retry_base: float
    retry_max_wait: float

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamPolicy:
        return cls(
            first_token_timeout=settings.llm_first_token_timeout,
            token_timeout=settings.llm_token_timeout,
            max_retries=settings.llm_max_retries,
            retry_base=settings.llm_retry_base_seconds,
            retry_max_wait=settings.llm_retry_max_wait_seconds,
        )

    def delay(self, attempt: int, failure: ModelFailure) -> float:
        backoff = self.retry_base * (2**attempt) * random.uniform(0.8, 1.2)
        wanted = failure.retry_after if failure.retry_after is not None else backoff
        return min(max(wanted, 0.0), self.retry_max_wait)


class ModelStream:
    """An opened answer: `head` holds the deltas up to the first text; iterate for the rest."""

    def __init__(self, model: ChatModel, head: list[Delta], rest: Any, policy: StreamPolicy):
        self.model = model
        self.head = head
        self._rest = rest
        self._policy = policy

    async def deltas(self) -> AsyncIterator[Delta]:
        for chunk in self.head:
            yield chunk
        if self._rest is None:
            return
        stall = _StallWatch(self._policy.token_timeout)
        try:
            while True:
                stall.waiting()
                try:
                    chunk = await self._rest.__anext__()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if stall.fired():
                        raise ModelFailure(
                            "stalled", detail=f"no token for {self._policy.token_timeout} s"
                        ) from None
                    raise
                except ModelFailure:
                    raise
                except Exception as exc:
                    raise classify(exc, started=True) from exc
                stall.done()
                if isinstance(chunk, Delta):  # (a model's turn began before its first text)
                    yield chunk
        finally:
            stall.close()
            await self.close()

    async def close(self) -> None:
        rest, self._rest = self._rest, None
        if rest is not None:
            try:
                await rest.aclose()
            except Exception:
                log.debug("closing a model stream raised", exc_info=True)


class _StallWatch:
    """The time limit between tokens, armed once per stream rather than once per token (a
    timer per token was 6 % of the event loop's time at 200 streams, docs/models.md): one
    timer that, when due, cancels the wait only if that wait began `limit` seconds ago,
    else sets itself for when it could."""

    def __init__(self, limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.limit = limit
        self.since: float | None = None  # when the current wait for a token began
        self._fired = False
        self._timer = self.loop.call_at(self.loop.time() + limit, self._check)

    def waiting(self) -> None:
        self.since = self.loop.time()

    def done(self) -> None:
        self.since = None

    def _check(self) -> None:
        now = self.loop.time()
        if self.since is not None and now >= self.since + self.limit and self.task is not None:
            self._fired = True
            self.task.cancel()
            return
        due = self.since + self.limit if self.since is not None else now + self.limit
        self._timer = self.loop.call_at(due, self._check)

    def fired(self) -> bool:
        """Whether the cancellation being raised is this watch's own (and only its own)."""
        if not self._fired or self.task is None:
            return False
        self._fired = False
        return self.task.uncancel() == 0

    def close(self) -> None:
        self._timer.cancel()


async def _head(
    stream: AsyncIterator[StreamItem],
    deadline: asyncio.Timeout,
    first_token: float,
    on_queued: OnQueued | None,
) -> tuple[list[Delta], bool]:
    """Deltas up to and including the first with text; True if the stream ended. A queued
    model's first-token clock starts when its turn begins."""
    head: list[Delta] = []
    async for item in stream:
        if isinstance(item, Queued):
            if item.position == 0:
                deadline.reschedule(asyncio.get_running_loop().time() + first_token)
            elif on_queued is not None:
                on_queued(item.position)
            continue
        head.append(item)
        if item.text:
            return head, False
    return head, True


async def open_stream(
    model: ChatModel,
    messages: list[BaseMessage],
    params: dict[str, Any],
    policy: StreamPolicy,
    on_queued: OnQueued | None = None,
) -> ModelStream:
    """Start an answer; returns once the first token is in. Raises ModelFailure. While it
    waits for a busy model, `on_queued` is told its place in line."""
    attempt = 0
    while True:
        stream = model.stream(messages, params)
        try:
            wait = None if model.queued else policy.first_token_timeout
            async with asyncio.timeout(wait) as deadline:
                head, ended = await _head(stream, deadline, policy.first_token_timeout, on_queued)
            return ModelStream(model, head, None if ended else stream, policy)
        except TimeoutError:
            failure = ModelFailure(
                "timeout", detail=f"no first token in {policy.first_token_timeout} s"
            )
        except asyncio.CancelledError:
            await _close_quietly(stream)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified
            failure = classify(exc, started=False)
        await _close_quietly(stream)
        if not failure.retryable or attempt >= policy.max_retries:
            raise failure
        wait = policy.delay(attempt, failure)
        log.warning("model %s: %s; retry %d in %.1f s", model.name, failure, attempt + 1, wait)
        await asyncio.sleep(wait)
        attempt += 1


async def _close_quietly(stream: Any) -> None:
    try:
        await stream.aclose()
    except Exception:
        log.debug("closing a failed model stream raised", exc_info=True)
