"""The Streamlit app against a real backend on 127.0.0.1 (fake model)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import LiveServer, register

APP = str(Path(__file__).resolve().parents[2] / "frontend" / "app.py")


@pytest.fixture
def app(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("BACKEND_URL", server.url)
    return AppTest.from_file(APP, default_timeout=30)


def test_sign_in_chat_and_find_the_conversation(app: AppTest, client: httpx.Client) -> None:
    register(client, "streamlit-user", "streamlit-pw")
    app.run()
    assert app.title[0].value == "ragstream"
    app.text_input[0].input("streamlit-user")
    app.text_input[1].input("streamlit-pw")
    app.button[0].click().run()
    assert not app.exception
    assert app.session_state.token

    app.chat_input[0].set_value("Hello app").run()
    assert not app.exception
    shown = [m.markdown[0].value for m in app.chat_message]
    assert shown == ["Hello app", "Hello there, how can I help?"]
    # The new conversation is in the sidebar.
    assert any(button.label.strip("*") == "Hello app" for button in app.sidebar.button)


def test_a_wrong_password_is_shown_not_raised(app: AppTest, client: httpx.Client) -> None:
    register(client, "careful-user", "right-password")
    app.run()
    app.text_input[0].input("careful-user")
    app.text_input[1].input("wrong-password")
    app.button[0].click().run()
    assert not app.exception
    assert app.error[0].value == "incorrect username or password"


def test_an_unreachable_backend_is_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_URL", "http://127.0.0.1:9")
    app = AppTest.from_file(APP, default_timeout=30)
    app.run()
    app.text_input[0].input("someone")
    app.text_input[1].input("password1")
    app.button[0].click().run()
    assert not app.exception
    assert "unreachable" in app.error[0].value
