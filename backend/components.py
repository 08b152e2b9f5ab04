"""Every external system behind one component, built once in the app's lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.db.engine import create_engine, migrate, session_factory
from backend.llm import ChatModelHandle, build_chat_model
from backend.services.chat import ChatService
from backend.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Components:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    model: ChatModelHandle
    chat_service: ChatService

    async def database_ok(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:  # readiness reports it; the log says why
            log.warning("database check failed", exc_info=True)
            return False

    async def close(self) -> None:
        self.model.close()
        await self.engine.dispose()


async def build_components(
    settings: Settings, *, model: ChatModelHandle | None = None
) -> Components:
    """Connect and migrate the history store, then load the chat model (or use `model`)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
        handle = model or build_chat_model(settings)
    except BaseException:
        await engine.dispose()
        raise
    sessions = session_factory(engine)
    log.info(
        "history store: %s; chat model: %s (%s)",
        engine.url.render_as_string(hide_password=True),
        handle.name,
        handle.provider,
    )
    return Components(
        settings=settings,
        engine=engine,
        sessions=sessions,
        model=handle,
        chat_service=ChatService(settings=settings, sessions=sessions, model=handle),
    )
