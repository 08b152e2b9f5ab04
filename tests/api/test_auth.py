"""Accounts: register, log in, /auth/me, and every way a credential can be wrong."""

from __future__ import annotations

import asyncio

import httpx
import jwt
import pytest

from backend.db import repository
from backend.db.engine import create_engine, session_factory
from backend.services.security import create_access_token
from tests.helpers import LiveServer, register


def test_register_login_and_me(client: httpx.Client) -> None:
    created = client.post("/auth/register", json={"username": "ada", "password": "analytical1"})
    assert created.status_code == 201
    assert created.json()["username"] == "ada"
    assert "password" not in created.text
    assert "hash" not in created.text

    token = client.post("/auth/token", data={"username": "ada", "password": "analytical1"})
    assert token.status_code == 200
    assert token.json()["token_type"] == "bearer"
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == created.json()["id"]
    assert me.json()["can_publish"] is False
    assert me.json()["max_upload_bytes"] == 20 * 2**20


def test_passwords_are_stored_as_argon2_hashes(client: httpx.Client, server: LiveServer) -> None:
    register(client, "hashed-user", "plain-text-pw")

    async def stored_hash() -> str:
        engine = create_engine(server.components.settings.resolved_database_url)
        try:
            async with session_factory(engine)() as session:
                user = await repository.get_user_by_username(
                    session=session, username="hashed-user"
                )
                assert user is not None
                return user.password_hash
        finally:
            await engine.dispose()

    value = asyncio.run(stored_hash())
    assert value.startswith("$argon2id$")
    assert "plain-text-pw" not in value


def test_a_taken_username_is_a_409(client: httpx.Client) -> None:
    register(client, "taken-name")
    again = client.post("/auth/register", json={"username": "taken-name", "password": "another-pw"})
    assert again.status_code == 409
    assert "already taken" in again.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ab", "password": "long-enough"}, "username"),
        ({"username": "has space", "password": "long-enough"}, "username"),
        ({"username": "fine-name", "password": "short"}, "password"),
        ({"username": "fine-name"}, "password"),
    ],
)
def test_bad_registrations_are_422_naming_the_field(
    client: httpx.Client, body: dict, field: str
) -> None:
    response = client.post("/auth/register", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_a_wrong_password_is_a_401(client: httpx.Client) -> None:
    register(client, "careful", "right-password")
    response = client.post(
        "/auth/token", data={"username": "careful", "password": "wrong-password"}
    )
    assert response.status_code == 401
    assert response.json()["detail"] == "incorrect username or password"
    unknown = client.post("/auth/token", data={"username": "nobody", "password": "whatever1"})
    assert unknown.status_code == 401


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"],
)
def test_missing_or_malformed_tokens_are_401(
    client: httpx.Client, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, url in [("GET", "/auth/me"), ("GET", "/conversations"), ("POST", "/chat/stream")]:
        response = client.request(method, url, headers=headers, json={"message": "hi"})
        assert response.status_code == 401, (method, url, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_expired_foreign_and_orphan_tokens_are_401(
    client: httpx.Client, server: LiveServer
) -> None:
    settings = server.components.settings
    headers = register(client)
    user_id = client.get("/auth/me", headers=headers).json()["id"]

    expired = create_access_token(
        subject=user_id, secret_key=settings.secret_key.get_secret_value(), minutes=-1
    )
    response = client.get("/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]

    foreign = create_access_token(
        subject=user_id, secret_key="another-key-that-is-long-enough-for-hs256", minutes=5
    )
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {foreign}"}).status_code == 401

    orphan = create_access_token(
        subject="no-such-user", secret_key=settings.secret_key.get_secret_value(), minutes=5
    )
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {orphan}"}).status_code == 401

    unsigned = jwt.encode({"sub": user_id, "exp": 9999999999}, key="", algorithm="none")
    assert (
        client.get("/auth/me", headers={"Authorization": f"Bearer {unsigned}"}).status_code == 401
    )
