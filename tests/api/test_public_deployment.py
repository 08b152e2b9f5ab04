"""What a public deployment adds to every response, what it may hide, and whose system
prompt holds on /v1."""

from __future__ import annotations

from tests.helpers import Serve, register


def test_responses_carry_security_headers(serve: Serve) -> None:
    development = serve().http
    headers = development.get("/health").headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert "strict-transport-security" not in headers
    assert "content-security-policy" not in development.get("/docs").headers  # it runs scripts
    production = serve(environment="production", secret_key="s" * 40).http
    assert "max-age=" in production.get("/health").headers["strict-transport-security"]


def test_the_interactive_docs_can_be_turned_off(serve: Serve) -> None:
    hidden = serve(api_docs=False).http
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert hidden.get(path).status_code == 404
    assert hidden.get("/health").status_code == 200


def test_a_v1_client_replaces_the_system_prompt_only_if_allowed(serve: Serve) -> None:
    live = serve(client_system_prompt="replace")
    headers = register(live.http)
    body = {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Hi"},
        ],
    }
    assert live.http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    prompt = live.components.models.default.chat.prompts[-1]
    assert prompt[0].text == "You are a pirate."
