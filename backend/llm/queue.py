"""A model's waiting line: llama.cpp keeps one context, so answers take turns.

`ModelQueue.join()` gives an answer its `Place`: the model at once if it is free, else a
place at the end of the line, whose position (1: next) moves up as those before it are
answered or leave (`Place.moves`). An answer that leaves (its reader went away) frees its
place at once; one whose turn ends passes the model on. `check()` refuses a new answer
when `max_waiting` already wait, with a guess of when a place frees: the one admission
check, for this process and for the workers that share the local model (llm/host.py).

`QueuedModel` is a LangChain chat model behind such a line."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage

from backend.common.errors import ModelBusy
from backend.llm.base import LangChainModel, Queued, StreamItem


class ModelQueue:
    def __init__(self, *, max_waiting: int, name: str = "the local model") -> None:
        self.max_waiting = max_waiting
        self.name = name
        self.busy = False
        self.waiting: list[Place] = []
        self.turn_seconds = 10.0  # a running mean of how long a turn takes

    def retry_after(self) -> int:
        return math.ceil(self.turn_seconds * (len(self.waiting) + 1))

    def check(self) -> None:
        """Raise ModelBusy if no answer may join the line now."""
        if self.busy and len(self.waiting) >= self.max_waiting:
            raise ModelBusy(
                f"{self.name} is busy: {len(self.waiting)} answers are waiting already; "
                "try again later",
                retry_after=self.retry_after(),
            )

    def join(self) -> Place:
        """A place for one answer: the model at once, or the end of the line (ModelBusy
        when the line is full). `leave()` it when the answer is done or goes away."""
        place = Place(self)
        if self.busy or self.waiting:
            self.check()
            self.waiting.append(place)
            place.position = len(self.waiting)
        else:
            self._admit(place)
        return place

    def _admit(self, place: Place) -> None:
        self.busy = True
        place.position, place.started = 0, time.monotonic()
        place.moved.set()

    def _leave(self, place: Place) -> None:
        if place.position == 0:  # its turn ends: the first in line has the model
            self.turn_seconds = 0.8 * self.turn_seconds + 0.2 * (time.monotonic() - place.started)
            self.busy = False
            if self.waiting:
                self._admit(self.waiting.pop(0))
                self._announce(0)
        elif place in self.waiting:
            index = self.waiting.index(place)
            del self.waiting[index]
            self._announce(index)

    def _announce(self, start: int) -> None:
        """Tell those from `start` on their new positions."""
        for position, place in enumerate(self.waiting[start:], start + 1):
            place.position = position
            place.moved.set()


class Place:
    """One answer's place: `position` 0 holds the model, 1 is next in line."""

    def __init__(self, line: ModelQueue) -> None:
        self.line = line
        self.position = 0
        self.started = 0.0
        self.moved = asyncio.Event()
        self.left = False

    async def moves(self) -> AsyncIterator[int]:
        """Its position now and each time it moves up, until its turn begins."""
        while self.position > 0:
            self.moved.clear()
            yield self.position
            await self.moved.wait()

    def leave(self) -> None:
        """The answer is done, or went away: its turn or its place passes on (once)."""
        if not self.left:
            self.left = True
            self.line._leave(self)


@dataclass
class QueuedModel(LangChainModel):
    """A LangChain chat model that answers one at a time: its answers take turns in `queue`."""

    queue: ModelQueue = field(kw_only=True)

    @property
    def queued(self) -> bool:
        return True

    async def admit(self) -> None:
        self.queue.check()

    async def stream(
        self, messages: list[BaseMessage], params: Mapping[str, Any]
    ) -> AsyncIterator[StreamItem]:
        place = self.queue.join()
        try:
            async for position in place.moves():
                yield Queued(position)
            yield Queued(0)
            deltas = LangChainModel.stream(self, messages, params)
            try:
                async for item in deltas:
                    yield item
            finally:
                await deltas.aclose()  # type: ignore[attr-defined]  # it stops generating
        finally:
            place.leave()
