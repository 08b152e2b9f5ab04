"""The limits of a public deployment: each trips with a 429 and `Retry-After`, and lets go
when its window passes; quotas reset; the operator's command line makes accounts and
admins; counters are shared through Redis; X-Forwarded-For counts only from a trusted
proxy."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from limits.aio.strategies import MovingWindowRateLimiter

from backend import cli
from backend.common.settings import parse_limit
from backend.db import repository
from backend.llm import ChatModel
from backend.services import limits as limits_module
from tests.helpers import (
    LiveServer,
    Serve,
    fake_model,
    first_answer,
    read_then_leave,
    register,
    wait_until,
)


def sign_in(client: httpx.Client, username: str, password: str, **headers: str) -> httpx.Response:
    return client.post(
        "/auth/token", data={"username": username, "password": password}, headers=headers
    )


def assert_limited(response: httpx.Response, words: str) -> int:
    assert response.status_code == 429, response.text
    assert words in response.json()["detail"]
    wait = int(response.headers["Retry-After"])
    assert wait >= 1
    return wait


def test_failed_sign_ins_are_slowed_per_username_and_address(serve: Serve) -> None:
    client = serve(limit_login_failures="3/2 seconds").http
    register(client, "ada", "analytical1")
    register(client, "bob", "babbage-pw")
    for _ in range(3):
        assert sign_in(client, "ada", "wrong-password").status_code == 401
    assert_limited(sign_in(client, "ada", "analytical1"), "failed sign-ins for this username")
    # The address is held too: another username from here fails the same way.
    assert sign_in(client, "bob", "babbage-pw").status_code == 429
    time.sleep(2.1)
    assert sign_in(client, "ada", "analytical1").status_code == 200  # the window passed


def test_registrations_per_address_and_closed_registration(serve: Serve) -> None:
    client = serve(limit_registrations="2/2 seconds").http
    register(client)
    register(client)
    refused = client.post("/auth/register", json={"username": "third", "password": "password3"})
    assert_limited(refused, "too many accounts created from here")
    time.sleep(2.1)
    register(client)
    closed = serve(registration="closed").http
    response = closed.post("/auth/register", json={"username": "nobody", "password": "password1"})
    assert response.status_code == 403
    assert "registration is closed" in response.json()["detail"]


def test_requests_per_user_on_chat_search_and_ingestion(serve: Serve) -> None:
    client = serve(limit_requests="3/2 seconds").http
    headers, other = register(client), register(client)
    for _ in range(3):
        assert client.post("/search", json={"query": "x"}, headers=headers).status_code == 200
    assert_limited(client.post("/chat", json={"message": "hi"}, headers=headers), "too many")
    v1 = client.post(
        "/v1/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert v1.status_code == 429
    assert v1.json()["error"]["type"] == "rate_limit_error"  # OpenAI's shape
    assert int(v1.headers["Retry-After"]) >= 1
    assert client.post("/search", json={"query": "x"}, headers=other).status_code == 200
    assert client.get("/conversations", headers=headers).status_code == 200  # not limited
    time.sleep(2.1)
    assert client.post("/search", json={"query": "x"}, headers=headers).status_code == 200


@pytest.mark.parametrize("model", [fake_model(["slow " * 100], sleep=0.02)])
def test_answers_streaming_at_once_per_user(serve: Serve, model: ChatModel) -> None:
    client = serve(model=model, limit_streams=1).http
    headers = register(client)
    meta, _, _ = read_then_leave(client, headers, 5, on_disconnect="finish")
    second = client.post("/chat/stream", json={"message": "again"}, headers=headers)
    assert_limited(second, "still streaming")
    assert client.post(f"/messages/{meta['assistant_message_id']}/stop", headers=headers)
    deadline = time.monotonic() + 10
    while client.post("/chat", json={"message": "now"}, headers=headers).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # An answer asked for in one JSON response counts too, while it is being generated.
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(client.post, "/chat", json={"message": "long"}, headers=headers)
        long = wait_until(
            lambda: next(
                (
                    c
                    for c in client.get("/conversations", headers=headers).json()["data"]
                    if c["title"] == "long"
                ),
                None,
            )
        )
        assert_limited(
            client.post("/chat/stream", json={"message": "again"}, headers=headers),
            "still streaming",
        )
        answer = wait_until(lambda: first_answer(client, headers, long["id"]))
        assert client.post(f"/messages/{answer['id']}/stop", headers=headers).status_code == 202
        assert asked.result(timeout=10).json()["message"]["status"] == "interrupted"


def test_the_daily_token_quota_says_when_it_resets(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = serve(limit_tokens_per_day=30).http
    headers = register(client)
    assert client.post("/chat", json={"message": "hi"}, headers=headers).status_code == 200
    refused = client.post("/chat/stream", json={"message": "more"}, headers=headers)
    wait = assert_limited(refused, "tokens for today; the quota resets at")
    assert wait <= 24 * 3600
    assert refused.json()["detail"].endswith("00:00 UTC")
    # A new day: a new counter.
    monkeypatch.setattr(limits_module, "_day_key", lambda user_id: f"tokens/{user_id}/tomorrow")
    assert client.post("/chat", json={"message": "hi"}, headers=headers).status_code == 200


async def test_admins_are_held_to_no_per_user_limit(serve: Serve) -> None:
    live: LiveServer = serve(limit_requests="1/minute", limit_tokens_per_day=1)
    headers = register(live.http, "operator-friend")
    async with live.components.sessions() as session:
        user = await repository.get_user_by_username(session=session, username="operator-friend")
        assert user is not None
        user.is_admin = True
        await session.commit()
    for _ in range(3):
        assert live.http.post("/chat", json={"message": "hi"}, headers=headers).status_code == 200
    assert live.http.get("/auth/me", headers=headers).json()["is_admin"] is True


def test_only_a_trusted_proxy_names_the_client(serve: Serve) -> None:
    direct = serve(limit_login_failures="2/minute").http
    register(direct, "carol", "carol-password")
    register(direct, "dave", "dave-password")
    for _ in range(2):
        sign_in(direct, "carol", "nope-nope", **{"X-Forwarded-For": "198.51.100.7"})
    # Not behind a trusted proxy: the header is ignored, the socket's address is held.
    assert (
        sign_in(direct, "dave", "dave-password", **{"X-Forwarded-For": "203.0.113.9"}).status_code
        == 429
    )

    proxied = serve(limit_login_failures="2/minute", trusted_proxies=["127.0.0.1"]).http
    register(proxied, "erin", "erin-password")
    register(proxied, "frank", "frank-password")
    for _ in range(2):
        sign_in(proxied, "erin", "nope-nope", **{"X-Forwarded-For": "198.51.100.7"})
    held = sign_in(proxied, "frank", "frank-password", **{"X-Forwarded-For": "198.51.100.7"})
    assert_limited(held, "for this address")
    other = sign_in(proxied, "frank", "frank-password", **{"X-Forwarded-For": "203.0.113.9"})
    assert other.status_code == 200


def test_replicas_share_the_counters_through_redis(serve: Serve, redis_url: str) -> None:
    one = serve(limit_requests="3/minute", redis_url=redis_url)
    two = serve(limit_requests="3/minute", redis_url=redis_url)  # the same database too
    headers = register(one.http)
    for client in (one.http, two.http, one.http):
        assert client.post("/search", json={"query": "x"}, headers=headers).status_code == 200
    assert_limited(two.http.post("/search", json={"query": "x"}, headers=headers), "too many")


def test_operators_add_list_and_disable_accounts(
    serve: Serve,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live = serve(registration="closed")
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("chosen-password\n"))
    assert cli.main(["users", "add", "grace", "--password-stdin"]) == 0
    assert cli.main(["users", "add", "root", "--admin"]) == 0
    password = capsys.readouterr().out.split("password: ")[1].strip()
    assert sign_in(live.http, "grace", "chosen-password").status_code == 200
    root = sign_in(live.http, "root", password).json()["access_token"]
    me = live.http.get("/auth/me", headers={"Authorization": f"Bearer {root}"}).json()
    assert me["is_admin"] is True
    assert cli.main(["users", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["grace", "root"]
    assert listed[1].endswith("admin")
    assert cli.main(["users", "disable", "grace"]) == 0
    assert sign_in(live.http, "grace", "chosen-password").status_code == 401
    assert cli.main(["users", "add", "x"]) == 2  # too short a name: refused, nothing stored


async def test_memory_counters_are_cleaned_up_at_most_once_a_second() -> None:
    """The library would start its clean-up (a task, a thread trip per window) at every
    hit; ours runs it once per `prune_seconds`, and the limits hold all the same."""
    storage = limits_module.PrunedMemoryStorage()
    storage.prune_seconds = 0.3
    window = MovingWindowRateLimiter(storage)
    two_a_second = parse_limit("2/second")
    assert await window.hit(two_a_second, "old")
    cleanup = storage.timer
    assert cleanup is not None
    await cleanup
    for key in ("a", "b", "c"):
        assert await window.hit(two_a_second, key)
        assert await window.hit(two_a_second, key)
        assert not await window.hit(two_a_second, key)  # the third in the second
    assert storage.timer is cleanup  # not started again within prune_seconds
    await asyncio.sleep(1.1)  # every window above has expired
    assert await window.hit(two_a_second, "new")
    assert storage.timer is not cleanup
    await storage.timer
    assert list(storage.events) == [two_a_second.key_for("new")]  # the expired are gone
