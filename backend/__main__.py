"""`python -m backend`: serve the API on HOST:PORT with the settings from the environment."""

from __future__ import annotations

import uvicorn

from backend.app import create_app
from backend.logs import configure as configure_logging
from backend.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit()
    configure_logging(
        level=settings.log_level, fmt=settings.log_format, instance=settings.instance_name
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # X-Forwarded-For only from TRUSTED_PROXIES (backend.app)
        log_config=None,  # ours (backend.logs), set above
    )


if __name__ == "__main__":
    main()
