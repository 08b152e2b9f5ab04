"""Signing in with an OpenID Connect provider: the whole browser-style flow against a real
provider on 127.0.0.1 (oidc-provider-mock): login (302, PKCE, state, nonce), the provider's
form, the callback (code exchanged, ID token checked, userinfo), the one-time ticket, and
what must fail: a tampered state or nonce, a used or expired code or flow, a foreign
browser, a username someone else holds, the allow-lists and REGISTRATION."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from backend.api.routes.oidc import FLOW_COOKIE, OidcClient, _sign
from tests.helpers import LiveServer, Serve, register


@dataclass
class Browser:
    """A browser: cookies kept, redirects looked at one by one."""

    server: LiveServer
    http: httpx.Client

    def login(self, next_url: str = "/done", **params: str) -> str:
        """GET /auth/oidc/login; the provider's authorization URL it redirects to."""
        response = self.http.get(
            f"{self.server.url}/auth/oidc/login", params={"next": next_url, **params}
        )
        assert response.status_code == 302, response.text
        return response.headers["location"]

    def authorize(self, authorization_url: str, sub: str) -> str:
        """The provider's form posted as `sub`; the callback URL it redirects to."""
        response = self.http.post(authorization_url, data={"sub": sub})
        assert response.status_code == 302, response.text
        return response.headers["location"]

    def callback(self, callback_url: str) -> httpx.Response:
        return self.http.get(callback_url)


@pytest.fixture
def oidc_server(serve: Serve, oidc_provider: str) -> LiveServer:
    return serve(**provider_settings(oidc_provider))


def provider_settings(provider: str, **more: Any) -> dict[str, Any]:
    return {
        "oidc_issuer": provider,
        "oidc_client_id": "ragstream-test",
        "oidc_client_secret": "test-client-secret",
        **more,
    }


def browser(server: LiveServer) -> Browser:
    return Browser(server, httpx.Client(timeout=30, follow_redirects=False))


def person(provider: str, sub: str, **claims: Any) -> None:
    response = httpx.put(f"{provider}/users/{sub}", json={"sub": sub, **claims})
    assert response.status_code == 204, response.text


def ticket_of(response: httpx.Response) -> str:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    return parse_qs(location.query)["sign_in"][0]


def sign_in(server: LiveServer, sub: str, *, next_url: str = "/done") -> dict[str, str]:
    """The whole flow in a fresh browser; the bearer headers of the account it reached."""
    b = browser(server)
    response = b.callback(b.authorize(b.login(next_url), sub))
    token = server.http.post("/auth/oidc/ticket", json={"ticket": ticket_of(response)})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def me(server: LiveServer, headers: dict[str, str]) -> dict[str, Any]:
    response = server.http.get("/auth/me", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return urlunsplit(parts._replace(query=urlencode({**query, **changes})))


def test_the_whole_flow_signs_in_and_the_second_sign_in_finds_the_same_account(
    oidc_server: LiveServer, oidc_provider: str
) -> None:
    person(oidc_provider, "sub-ada", preferred_username="ada", email="ada@example.org")
    b = browser(oidc_server)
    authorization_url = b.login("/done?tab=chat")
    asked = parse_qs(urlsplit(authorization_url).query)
    assert authorization_url.startswith(f"{oidc_provider}/oauth2/authorize")
    assert asked["code_challenge_method"] == ["S256"]
    assert asked["code_challenge"]
    assert asked["state"]
    assert asked["nonce"]
    assert asked["client_id"] == ["ragstream-test"]
    assert asked["redirect_uri"] == [f"{oidc_server.url}/auth/oidc/callback"]
    cookie = next(c for c in b.http.cookies.jar if c.name == FLOW_COOKIE)
    assert cookie.path == "/auth/oidc"
    assert cookie.has_nonstandard_attr("HttpOnly")

    callback_url = b.authorize(authorization_url, "sub-ada")
    assert parse_qs(urlsplit(callback_url).query)["state"] == asked["state"]
    done = b.callback(callback_url)
    assert done.status_code == 302, done.text
    location = urlsplit(done.headers["location"])
    assert location.path == "/done"
    assert parse_qs(location.query)["tab"] == ["chat"]
    ticket = ticket_of(done)
    assert FLOW_COOKIE not in {c.name for c in b.http.cookies.jar}  # spent

    token = oidc_server.http.post("/auth/oidc/ticket", json={"ticket": ticket})
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    first = me(oidc_server, headers)
    assert first["username"] == "ada"
    # The ticket serves once.
    again = oidc_server.http.post("/auth/oidc/ticket", json={"ticket": ticket})
    assert again.status_code == 401
    assert "used" in again.json()["detail"]
    # The API works with the backend's own token: a conversation, an API key.
    api_key = oidc_server.http.post("/auth/api-keys", headers=headers, json={"name": "k"})
    assert api_key.status_code == 201

    # A second sign-in, in another browser, reaches the same account.
    assert me(oidc_server, sign_in(oidc_server, "sub-ada"))["id"] == first["id"]
    # Nobody can sign in with a password to an account made by signing in.
    password = oidc_server.http.post("/auth/token", data={"username": "ada", "password": "!"})
    assert password.status_code == 401


def test_a_username_someone_holds_gives_the_newcomer_another_and_never_their_account(
    oidc_server: LiveServer, oidc_provider: str
) -> None:
    grace = register(oidc_server.http, "grace")
    person(oidc_provider, "sub-other-grace", preferred_username="grace")
    newcomer = me(oidc_server, sign_in(oidc_server, "sub-other-grace"))
    assert newcomer["username"] == "grace-2"
    assert newcomer["id"] != me(oidc_server, grace)["id"]
    # The same email as someone's is no key either: accounts go by (issuer, subject).
    person(oidc_provider, "sub-third", preferred_username="grace", email="grace@example.org")
    third = me(oidc_server, sign_in(oidc_server, "sub-third"))
    assert third["username"] == "grace-3"
    assert third["id"] != newcomer["id"]


def test_a_tampered_state_or_a_foreign_browser_is_refused(
    oidc_server: LiveServer, oidc_provider: str
) -> None:
    b = browser(oidc_server)
    callback_url = b.authorize(b.login(), "sub-mallory")
    tampered = b.callback(with_query(callback_url, state="forged-state"))
    assert tampered.status_code == 400
    assert "state" in tampered.json()["detail"].lower()
    # The code in another browser (no flow cookie: a login CSRF) is refused too.
    foreign = browser(oidc_server).callback(callback_url)
    assert foreign.status_code == 400
    assert "not started in this browser" in foreign.json()["detail"]
    # A forged cookie (not signed with SECRET_KEY).
    forger = browser(oidc_server)
    forger.http.cookies.set(FLOW_COOKIE, "eyJhbGciOiJub25lIn0.e30.", path="/auth/oidc")
    assert forger.callback(callback_url).status_code == 400


def test_a_tampered_nonce_fails_the_id_token_check(
    oidc_server: LiveServer, oidc_provider: str
) -> None:
    b = browser(oidc_server)
    authorization_url = with_query(b.login(), nonce="an-attackers-nonce")
    response = b.callback(b.authorize(authorization_url, "sub-eve"))
    assert response.status_code == 400
    assert "nonce" in response.json()["detail"].lower()


def test_a_used_code_and_an_expired_flow_are_refused(
    oidc_server: LiveServer, oidc_provider: str
) -> None:
    b = browser(oidc_server)
    callback_url = b.authorize(b.login(), "sub-replay")
    flow = b.http.cookies.get(FLOW_COOKIE)
    assert flow
    assert b.callback(callback_url).status_code == 302
    b.http.cookies.set(FLOW_COOKIE, flow, path="/auth/oidc")  # replayed with its cookie
    replay = b.callback(callback_url)
    assert replay.status_code == 400
    assert "invalid_grant" in replay.json()["detail"]

    settings = oidc_server.components.settings
    expired = _sign(settings, "flow", {"session": {}, "next": "/", "link": None}, -5)
    late = browser(oidc_server)
    late.http.cookies.set(FLOW_COOKIE, expired, path="/auth/oidc")
    refused = late.callback(f"{oidc_server.url}/auth/oidc/callback?code=x&state=y")
    assert refused.status_code == 400
    assert "expired" in refused.json()["detail"]


def test_a_password_account_is_linked_once_signed_in(
    oidc_server: LiveServer, oidc_provider: str
) -> None:
    headers = register(oidc_server.http, "linus")
    linus = me(oidc_server, headers)
    link = oidc_server.http.post("/auth/oidc/link", headers=headers, json={"next": "/settings"})
    assert link.status_code == 200, link.text
    b = browser(oidc_server)
    authorization_url = b.http.get(link.json()["url"]).headers["location"]
    person(oidc_provider, "sub-linus", preferred_username="linus-at-work")
    ticket = ticket_of(b.callback(b.authorize(authorization_url, "sub-linus")))
    token = oidc_server.http.post("/auth/oidc/ticket", json={"ticket": ticket}).json()
    linked = me(oidc_server, {"Authorization": f"Bearer {token['access_token']}"})
    assert linked["id"] == linus["id"]
    assert linked["username"] == "linus"
    # From now on, signing in with the provider reaches the password account.
    assert me(oidc_server, sign_in(oidc_server, "sub-linus"))["id"] == linus["id"]
    # The identity cannot be linked to a second account.
    other = register(oidc_server.http, "other-linus")
    url = oidc_server.http.post("/auth/oidc/link", headers=other, json={"next": "/"}).json()["url"]
    b2 = browser(oidc_server)
    response = b2.callback(b2.authorize(b2.http.get(url).headers["location"], "sub-linus"))
    assert response.status_code == 409
    # A link token forged or for nobody is refused before the provider is asked.
    assert (
        b2.http.get(
            f"{oidc_server.url}/auth/oidc/login", params={"next": "/", "link": "forged"}
        ).status_code
        == 400
    )


def test_next_must_stay_on_allowed_origins(oidc_server: LiveServer) -> None:
    b = browser(oidc_server)
    for target in ("https://evil.example/steal", "//evil.example/", "javascript:alert(1)"):
        response = b.http.get(f"{oidc_server.url}/auth/oidc/login", params={"next": target})
        assert response.status_code == 422, target
        assert "next" in response.text
    assert b.login(f"{oidc_server.url}/back").startswith("http://127.0.0.1")


def test_registration_rules_and_allow_lists(serve: Serve, oidc_provider: str) -> None:
    common = provider_settings(oidc_provider)
    closed = serve(registration="closed", **common)
    refused = browser(closed)
    response = refused.callback(refused.authorize(refused.login(), "sub-stranger"))
    assert response.status_code == 403
    assert "registration is closed" in response.json()["detail"]

    only_oidc = serve(registration="oidc", **common)
    password = only_oidc.http.post(
        "/auth/register", json={"username": "pat", "password": "long-password"}
    )
    assert password.status_code == 403
    assert "signing in" in password.json()["detail"]
    assert me(only_oidc, sign_in(only_oidc, "sub-pat"))["username"]

    person(oidc_provider, "sub-staff", email="kim@staff.example", email_verified=True)
    person(oidc_provider, "sub-unverified", email="lee@staff.example", email_verified=False)
    person(oidc_provider, "sub-outsider", email="max@elsewhere.example", email_verified=True)
    person(oidc_provider, "sub-member", orgs=[{"preferred_username": "our-org"}])
    listed = serve(oidc_allowed_domains=["staff.example"], oidc_allowed_orgs=["our-org"], **common)
    assert me(listed, sign_in(listed, "sub-staff"))["username"] == "kim"
    assert me(listed, sign_in(listed, "sub-member"))
    for sub in ("sub-unverified", "sub-outsider"):
        b = browser(listed)
        response = b.callback(b.authorize(b.login(), sub))
        assert response.status_code == 403, sub
        assert "allowed organisations or email domains" in response.json()["detail"]


def test_providers_and_an_unconfigured_server(
    oidc_server: LiveServer, server: LiveServer, oidc_provider: str
) -> None:
    shown = oidc_server.http.get("/auth/providers").json()
    assert shown["oidc"] is True
    assert shown["login_url"].endswith("/auth/oidc/login")
    assert shown["oidc_name"] == urlsplit(oidc_provider).netloc  # the issuer's host
    plain = server.http.get("/auth/providers").json()
    assert plain["oidc"] is False
    assert plain["login_url"] is None
    response = server.http.get("/auth/oidc/login", params={"next": "/"})
    assert response.status_code == 404
    assert "OIDC_ISSUER" in response.json()["detail"]


def test_an_inference_api_sign_in_becomes_the_users_model_key_and_is_refreshed(
    serve: Serve, oidc_provider: str, tmp_path: Path
) -> None:
    scopes = "openid profile inference-api"
    server = serve(**provider_settings(oidc_provider, oidc_scopes=scopes))
    # The provider grants inference-api only to a client registered for it.
    client = httpx.post(
        f"{oidc_provider}/oauth2/clients",
        json={"redirect_uris": [f"{server.url}/auth/oidc/callback"], "scope": scopes},
    ).json()
    config = server.components.settings.resolved_oidc.model_copy(
        update={"client_id": client["client_id"], "client_secret": client["client_secret"]}
    )
    server.app.state.oidc = OidcClient(config)
    server.components.user_models.refresher = server.app.state.oidc.refresh
    headers = sign_in(server, "sub-hf-user")
    key = server.http.get("/auth/me/model-key", headers=headers)
    assert key.status_code == 200, key.text
    shown = key.json()
    assert shown["source"] == "sign-in"
    assert shown["provider"] == "huggingface"
    assert shown["model_id"].startswith("my-key:")
    assert "…" in shown["hint"]
    models = server.http.get("/models", headers=headers).json()["data"]
    assert models[0]["own_key"] is True
    assert models[0]["default"] is True

    # Near its expiry the token is refreshed with the refresh token, at its next use.
    database = server.components.settings.resolved_database_url.split(":///", 1)[1]
    with sqlite3.connect(database) as db:
        db.execute("UPDATE model_keys SET expires_at = '2000-01-01 00:00:00.000000'")
    assert server.http.get("/models", headers=headers).status_code == 200
    refreshed = server.http.get("/auth/me/model-key", headers=headers).json()
    assert not refreshed["expires_at"].startswith("2000")
    assert refreshed["hint"] != shown["hint"]  # a new access token
