from __future__ import annotations

import os

# Before anything imports huggingface_hub: no call home. (Never HF_HUB_OFFLINE: it refuses
# even the loopback servers the tests start.)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.llm import ChatModelHandle
from tests.helpers import (
    LiveServer,
    build_app,
    create_database,
    drop_database,
    fake_model,
    live_server,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL for this test run, dropped afterwards."""
    name = f"ragstream_test_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(create_database(POSTGRES_ADMIN_URL, name))
    except Exception as exc:  # noqa: BLE001 - any failure means no PostgreSQL here
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but unreachable at {POSTGRES_ADMIN_URL}: {exc}")
        pytest.skip(
            f"no PostgreSQL at {POSTGRES_ADMIN_URL} ({exc}); run scripts/ensure-postgres.sh"
        )
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(drop_database(POSTGRES_ADMIN_URL, name))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs against SQLite and against PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"


@pytest.fixture
def model() -> ChatModelHandle:
    return fake_model()


@pytest.fixture
def server(tmp_path: Path, sqlite_url: str, model: ChatModelHandle) -> Iterator[LiveServer]:
    """A real uvicorn server on SQLite with the fake model (override `model` to change it)."""
    with live_server(build_app(tmp_path, sqlite_url, model=model)) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
