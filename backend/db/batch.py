"""Many requests' database calls as one: group commit for writes (`BatchWriter`: the rows
of many requests in one transaction, each statement run once for all its rows, one
executemany) and batched lookups by id for reads (`BatchLoader`).

Under load a database call costs turns of a busy event loop, and on SQLite every write
transaction waits for the one writer (its busy handler sleeps up to 100 ms at a time): 200
questions arriving together, each in a transaction of its own, took seconds to store
(docs/models.md). Through a `BatchWriter` they queue for the next transaction: while one
commits, the next gathers whatever arrives meanwhile. One that fails is retried alone, so
that one bad row fails only its own request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable

log = logging.getLogger(__name__)

Row = TypeVar("Row")
T = TypeVar("T")
Rows = Mapping[Executable, Sequence[Mapping[str, Any]]]  # statement -> its parameters


class BatchWriter:
    def __init__(self, engine: AsyncEngine, statements: Sequence[Executable]) -> None:
        self.engine = engine
        self.statements = tuple(statements)  # run in this order in every transaction
        # Held by each transaction; other writers of this process take it too, so that
        # they never wait for each other inside the database.
        self.lock = asyncio.Lock()
        self._pending: list[tuple[Rows, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def write(self, rows: Rows) -> None:
        """Write `rows` in the next transaction; returns once it is committed, or raises
        its error. A caller that is cancelled meanwhile does not take its write back."""
        unknown = [s for s in rows if s not in self.statements]
        if unknown:
            raise ValueError(f"not a statement of this writer: {unknown[0]}")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="batch writer")
        await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._commit([rows for rows, _ in batch])
                except Exception as exc:  # noqa: BLE001 - raised to the writer's caller
                    if len(batch) == 1:
                        _settle(batch[0][1], error=exc)
                    else:  # find the write that failed it: each alone
                        log.warning("%d writes failed together (%s): each alone", len(batch), exc)
                        for rows, future in batch:
                            await self._alone(rows, future)
                    continue
                for _, future in batch:
                    _settle(future)
        finally:
            self._task = None

    async def _alone(self, rows: Rows, future: asyncio.Future[None]) -> None:
        try:
            await self._commit([rows])
        except Exception as exc:  # noqa: BLE001 - raised to the writer's caller
            _settle(future, error=exc)
        else:
            _settle(future)

    async def _commit(self, batch: list[Rows]) -> None:
        async with self.lock, self.engine.begin() as connection:
            for statement in self.statements:
                params = [p for rows in batch for p in rows.get(statement, ())]
                if params:
                    await connection.execute(statement, params)


def _settle(
    future: asyncio.Future[T | None], result: T | None = None, error: Exception | None = None
) -> None:
    """Hand a caller its result or error, unless it stopped waiting (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BatchLoader(Generic[Row]):
    """Rows by id for many requests at once: the ids asked for while one query runs are
    looked up together in the next (one `SELECT … WHERE id IN (…)`), so that 200 requests
    arriving together authenticate with a few queries instead of 200 sessions. Always
    read from the database: nothing is kept between queries."""

    MAX_IDS = 500  # per query (SQLite takes up to 32,766 parameters)

    def __init__(self, sessions: async_sessionmaker[AsyncSession], model: type[Row]) -> None:
        self.sessions = sessions
        self.model = model
        self._waiting: dict[str, list[asyncio.Future[Row | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, id_: str) -> Row | None:
        future: asyncio.Future[Row | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(id_, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._load(), name=f"{self.model.__name__} loader")
        return await future

    async def _load(self) -> None:
        try:
            while self._waiting:
                ids = list(self._waiting)[: self.MAX_IDS]
                batch = {id_: self._waiting.pop(id_) for id_ in ids}
                try:
                    async with self.sessions() as session:
                        found = await session.scalars(
                            select(self.model).where(self.model.id.in_(ids))  # type: ignore[attr-defined]
                        )
                        rows = {row.id: row for row in found}  # type: ignore[attr-defined]
                except Exception as exc:  # noqa: BLE001 - raised to the loader's callers
                    for futures in batch.values():
                        for future in futures:
                            _settle(future, error=exc)
                    continue
                for id_, futures in batch.items():
                    for future in futures:
                        _settle(future, rows.get(id_))
        finally:
            self._task = None
