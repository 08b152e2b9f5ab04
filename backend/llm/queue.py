"""The local model's waiting line: llama.cpp keeps one context, so answers take turns.

`ModelQueue.turn()` admits one answer at a time in arrival order. A waiting answer is
told its position (1: next) when it joins and whenever it moves up; one that leaves
(its reader went away) frees its place at once. `check()` refuses a new answer when
`max_waiting` already wait, with a guess of when a place frees."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from backend.common.errors import ModelBusy

OnQueued = Callable[[int], None]


class ModelQueue:
    def __init__(self, *, max_waiting: int, name: str = "the local model") -> None:
        self.max_waiting = max_waiting
        self.name = name
        self.busy = False
        self.waiting: list[tuple[asyncio.Future[None], OnQueued | None]] = []
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

    @asynccontextmanager
    async def turn(self, on_queued: OnQueued | None = None) -> AsyncIterator[None]:
        """Hold the model for one answer; `on_queued(position)` while waiting."""
        if self.busy or self.waiting:
            self.check()
            admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append((admitted, on_queued))
            if on_queued is not None:
                on_queued(len(self.waiting))
            try:
                await admitted
            except asyncio.CancelledError:
                if admitted.done() and not admitted.cancelled():
                    self._next()  # admitted just as it left: pass the turn on
                else:
                    self._leave(admitted)
                raise
        self.busy = True
        started = time.monotonic()
        try:
            yield
        finally:
            self.turn_seconds = 0.8 * self.turn_seconds + 0.2 * (time.monotonic() - started)
            self._next()

    def _leave(self, admitted: asyncio.Future[None]) -> None:
        index = next(i for i, (f, _) in enumerate(self.waiting) if f is admitted)
        del self.waiting[index]
        self._announce(index)

    def _next(self) -> None:
        """The turn passes to the first in line (the model is free if no one waits)."""
        self.busy = False
        if self.waiting:
            admitted, _ = self.waiting.pop(0)
            self.busy = True
            admitted.set_result(None)
            self._announce(0)

    def _announce(self, start: int) -> None:
        """Tell those from `start` on their new positions."""
        for position, (_, on_queued) in enumerate(self.waiting[start:], start + 1):
            if on_queued is not None:
                on_queued(position)
