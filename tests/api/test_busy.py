"""A database that cannot keep up (every connection taken, SQLite's one writer held past
its timeout) answers 503 with Retry-After: the caller tries again, nothing is half-done."""

from __future__ import annotations

import sqlite3

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from backend.api.errors import install_error_handlers

LOCKED = OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))
OTHER = OperationalError("SELECT ...", {}, sqlite3.OperationalError("no such table: x"))


def app_raising(exc: Exception) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/chat/stream")
    async def fails() -> None:
        raise exc

    @app.post("/v1/chat/completions")
    async def fails_v1() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("exc", [LOCKED, PoolTimeout("QueuePool limit reached")])
def test_a_busy_database_is_a_503_to_retry(exc: Exception) -> None:
    client = app_raising(exc)
    response = client.post("/chat/stream")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert "database is busy" in response.json()["detail"]
    v1 = client.post("/v1/chat/completions")
    assert v1.status_code == 503
    assert v1.json()["error"]["code"] == "busy"


def test_other_database_errors_stay_500s() -> None:
    response = app_raising(OTHER).post("/chat/stream")
    assert response.status_code == 500
