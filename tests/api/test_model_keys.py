"""Each user's own model key: saved encrypted and shown masked, their chats run on it (its
Authorization header seen by a loopback model, nobody else's request carrying it), outside
the operator's token quota; its failures name the key and never fall back; and no door into
the server's network: loopback, private, metadata addresses, names resolving to loopback
and redirects are refused, when saving and again when connecting."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from tests.helpers import LiveServer, Serve, live_server, register, stream_chat
from tests.upstream import Scenario, Upstream

USER_KEY = "sk-users-own-secret-key-0123456789"


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, LiveServer]]:
    model = Upstream("openai")
    with live_server(model.app) as served:
        yield model, served


def host_port(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture
def keyed(serve: Serve, upstream: tuple[Upstream, LiveServer]) -> LiveServer:
    """A server whose operator allow-listed the loopback model (and nothing else)."""
    return serve(user_key_allowed_hosts=[host_port(upstream[1].url)], limit_tokens_per_day=1000)


def save(server: LiveServer, headers: dict[str, str], **body: str) -> httpx.Response:
    return server.http.put("/auth/me/model-key", headers=headers, json=body)


def tokens_spent(server: LiveServer, user_id: str) -> int:
    """The operator's token counter for the user today (the quota's own storage)."""
    key = f"tokens/{user_id}/{datetime.now(UTC):%Y-%m-%d}"
    return int(asyncio.run(server.components.limits.storage.get(key)))


def test_a_users_key_is_kept_encrypted_shown_masked_and_serves_their_chats_only(
    keyed: LiveServer, upstream: tuple[Upstream, LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    model, served = upstream
    owner = register(keyed.http)
    saved = save(
        keyed,
        owner,
        provider="openai-compatible",
        api_key=USER_KEY,
        base_url=served.url + "/v1",
        model="their-model",
    )
    assert saved.status_code == 200, saved.text
    shown = saved.json()
    assert shown["hint"] == "sk-…6789"
    assert shown["model_id"] == "my-key:their-model"
    assert USER_KEY not in saved.text
    assert USER_KEY not in keyed.http.get("/auth/me/model-key", headers=owner).text

    # At rest: encrypted, not the key.
    database = keyed.components.settings.resolved_database_url.split(":///", 1)[1]
    with sqlite3.connect(database) as db:
        stored = db.execute("SELECT encrypted_key FROM model_keys").fetchall()
    assert len(stored) == 1
    assert USER_KEY not in stored[0][0]
    assert keyed.components.user_models.box.open(stored[0][0]) == USER_KEY

    # GET /models: theirs first, the default; the operator's after it.
    models = keyed.http.get("/models", headers=owner).json()["data"]
    assert [(m["id"], m["default"], m["own_key"]) for m in models] == [
        ("my-key:their-model", True, True),
        ("fake-model", False, False),
    ]
    v1 = keyed.http.get("/v1/models", headers=owner).json()["data"]
    assert [m["id"] for m in v1] == ["my-key:their-model", "fake-model"]

    me = keyed.http.get("/auth/me", headers=owner).json()
    before = tokens_spent(keyed, me["id"])
    answer = stream_chat(keyed.http, owner, message="What is on my key?")
    assert answer.text() == "Hello from upstream."
    assert answer.first("meta")["model"] == "my-key:their-model"
    assert [s.headers["authorization"] for s in model.seen] == [f"Bearer {USER_KEY}"]
    assert model.seen[0].body["model"] == "their-model"
    own_chat_spent = tokens_spent(keyed, me["id"]) - before
    assert own_chat_spent == 0  # the operator's counter did not move
    usage = answer.first("done")["usage"]

    # On the operator's model (chosen by name) the quota counts as before.
    operator = stream_chat(keyed.http, owner, message="And on yours?", model="fake-model")
    assert operator.text()
    assert len(model.seen) == 1
    operator_chat_spent = tokens_spent(keyed, me["id"]) - before
    assert operator_chat_spent > 0
    print(
        f"\ntoken counter: before {before}; chat on the user's key ({usage}) +{own_chat_spent}; "
        f"chat on the operator's model +{operator_chat_spent}"
    )

    # Somebody else's chat never carries the key (nor reaches the user's model).
    other = register(keyed.http)
    assert stream_chat(keyed.http, other, message="Mine?").first("meta")["model"] == "fake-model"
    assert len(model.seen) == 1
    refused = keyed.http.post(
        "/chat", headers=other, json={"message": "x", "model": "my-key:their-model"}
    )
    assert refused.status_code == 422
    assert "unknown model" in refused.text

    # Never in logs, errors or metrics.
    assert USER_KEY not in caplog.text
    assert USER_KEY not in keyed.http.get("/metrics").text

    # Deleted: chats are the operator's again.
    assert keyed.http.delete("/auth/me/model-key", headers=owner).status_code == 204
    assert keyed.http.get("/auth/me/model-key", headers=owner).status_code == 404
    assert stream_chat(keyed.http, owner, message="Back?").first("meta")["model"] == "fake-model"


def test_a_failing_key_says_so_and_never_falls_back_to_the_operators_model(
    keyed: LiveServer, upstream: tuple[Upstream, LiveServer]
) -> None:
    model, served = upstream
    owner = register(keyed.http)
    assert save(
        keyed, owner, provider="openai-compatible", api_key=USER_KEY,
        base_url=served.url, model="m",
    ).status_code == 200  # fmt: skip
    retries = keyed.components.settings.llm_max_retries
    for scenario, words in (
        (Scenario(status=401, error="Invalid API key"), "was refused by its provider"),
        (Scenario(status=429, error="quota"), "rate limited or out of quota"),
    ):
        model.scenarios.clear()
        model.script(*[scenario] * (1 + retries))  # a 429 is retried first
        answer = stream_chat(keyed.http, owner, message="Hello?")
        error = answer.first("error")
        assert "Your model key (sk-…6789)" in error["message"]
        assert words in error["message"]
        assert answer.text() == ""  # the operator's fake model did not answer instead
        assert USER_KEY not in str(answer.events)
    # The non-streamed chat: the same failure as a clear error.
    model.scenarios.clear()
    model.script(Scenario(status=401))
    response = keyed.http.post("/chat", headers=owner, json={"message": "Hello?"})
    assert response.status_code == 502
    assert "Your model key (sk-…6789)" in response.text


def test_the_operator_chooses_whether_users_keys_are_taken(
    serve: Serve, upstream: tuple[Upstream, LiveServer]
) -> None:
    _, served = upstream
    allowed = [host_port(served.url)]
    off = serve(user_keys="off", user_key_allowed_hosts=allowed)
    headers = register(off.http)
    response = save(
        off, headers, provider="openai-compatible", api_key=USER_KEY, base_url=served.url,
        model="m",
    )  # fmt: skip
    assert response.status_code == 403
    assert "USER_KEYS=off" in response.text

    required = serve(user_keys="required", user_key_allowed_hosts=allowed)
    headers = register(required.http)
    response = required.http.post("/chat", headers=headers, json={"message": "Hi"})
    assert response.status_code == 403
    assert "USER_KEYS=required" in response.json()["detail"]
    assert required.http.get("/models", headers=headers).json()["data"] == []
    assert save(
        required, headers, provider="openai-compatible", api_key=USER_KEY,
        base_url=served.url, model="m",
    ).status_code == 200  # fmt: skip
    assert required.http.post("/chat", headers=headers, json={"message": "Hi"}).status_code == 200


def redirector(target: str) -> Starlette:
    async def moved(request: Request) -> RedirectResponse:
        return RedirectResponse(target, status_code=307)

    return Starlette(routes=[Route("/{path:path}", moved, methods=["GET", "POST"])])


def test_base_urls_into_the_servers_network_are_refused(
    serve: Serve, upstream: tuple[Upstream, LiveServer]
) -> None:
    model, served = upstream
    with live_server(redirector("http://169.254.169.254/latest/meta-data/")) as moving:
        server = serve(user_key_allowed_hosts=[host_port(served.url), host_port(moving.url)])
        headers = register(server.http)
        port = served.url.rsplit(":", 1)[1]
        cases = {
            "http://127.0.0.1:1/v1": "loopback",  # loopback, another port than allowed
            "http://10.1.2.3/v1": "private",
            "http://192.168.0.10:8080": "private",
            "http://169.254.169.254/latest": "link-local",  # the cloud metadata service
            "http://[::1]:8000": "loopback",
            "http://[::ffff:127.0.0.1]:8000": "loopback",
            f"http://localhost:{port}/v1": "localhost (127.0.0.1)",  # a name for loopback
            "http://0.0.0.0:8000": "reserved",
            "http://user:pw@example.com/v1": "credentials",
            moving.url + "/v1": "redirect",  # allowed itself, but redirects to metadata
        }
        answers = {}
        for url, words in cases.items():
            response = save(
                server, headers, provider="openai-compatible", api_key=USER_KEY, base_url=url,
                model="m",
            )  # fmt: skip
            answers[url] = (response.status_code, response.json()["detail"])
            assert response.status_code == 422, (url, response.text)
            assert words in response.text, (url, response.text)
        for scheme in ("ftp://example.com/", "file:///etc/passwd", "gopher://x"):
            response = save(
                server, headers, provider="openai-compatible", api_key=USER_KEY,
                base_url=scheme, model="m",
            )  # fmt: skip
            assert response.status_code == 422, scheme
        assert model.seen == []
        print("\nSSRF answers:", *(f"{u} -> {a}" for u, a in answers.items()), sep="\n")

        # Checked again at connect time: an address allowed when saved and refused since
        # (as a name that resolves elsewhere later would be) is not connected to.
        assert save(
            server, headers, provider="openai-compatible", api_key=USER_KEY,
            base_url=served.url, model="m",
        ).status_code == 200  # fmt: skip
        policy = server.components.user_models.policy
        policy.names.clear()
        answer = stream_chat(server.http, headers, message="Still there?")
        error = answer.first("error")
        assert error["code"] == "model_address_refused"
        assert "loopback" in error["message"]
        assert model.seen == []
