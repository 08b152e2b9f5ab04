"""`python -m backend`: serve the API on HOST:PORT with the settings from the environment."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from backend.app import create_app
from backend.settings import get_settings


def main() -> None:
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"ragstream: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
