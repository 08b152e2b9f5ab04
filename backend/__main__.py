"""`python -m backend`: serve the API on HOST:PORT with the settings from the environment,
in WORKERS processes (default: one per core).

With several workers this process is their supervisor: it migrates the database once,
starts the one local-model process they share (when a model is `local`), then lets
uvicorn run the workers, each building the app from the same settings. Whatever one
worker stores, the others see: the database is shared, the embedded store and the BM25
statistics are re-read when another process changes them (backend.retrieval.embedded)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvicorn

from backend.common.logs import configure as configure_logging
from backend.common.settings import Settings, settings_or_exit


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


def main() -> None:
    settings = settings_or_exit()
    configure_logging(
        level=settings.log_level, fmt=settings.log_format, instance=settings.instance_name
    )
    serving: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "proxy_headers": False,  # X-Forwarded-For only from TRUSTED_PROXIES (backend.api.app)
        "log_config": None,  # ours (backend.common.logs), set above
    }
    workers = worker_count(settings)
    if workers == 1:
        from backend.api.app import create_app

        uvicorn.run(create_app(settings), **serving)
        return

    from backend.llm.host import shared_local_model
    from backend.services.components import open_database

    async def migrate() -> None:
        engine = await open_database(settings)  # migrations run here, once
        await engine.dispose()

    asyncio.run(migrate())
    with shared_local_model(settings):  # sets LOCAL_MODEL_URL for the workers
        uvicorn.run("backend.api.app:create_worker_app", factory=True, workers=workers, **serving)


if __name__ == "__main__":
    main()
