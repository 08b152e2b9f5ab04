"""The Streamlit app, page state by page state, against a real backend on 127.0.0.1."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from streamlit.testing.v1 import AppTest

from backend.cli import main as cli
from backend.common.settings import Settings, get_settings
from backend.llm import ChatModel
from frontend.client import BackendError
from tests.helpers import LiveServer, Serve, fake_model, ingest, register

APP = str(Path(__file__).resolve().parents[2] / "frontend" / "app.py")
REPLY = "Glaciers retreat as winters warm [1]."


@pytest.fixture
def model():
    return fake_model([REPLY, "A second answer."])


@pytest.fixture
def app(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("BACKEND_URL", server.url)
    return AppTest.from_file(APP, default_timeout=30)


def signed_in(
    app: AppTest, client: httpx.Client, username: str = "streamlit-user"
) -> dict[str, str]:
    headers = register(client, username, "streamlit-pw")
    app.run()
    app.text_input[0].input(username)
    app.text_input[1].input("streamlit-pw")
    app.button[0].click().run()
    assert not app.exception, app.exception
    return headers


def ask(app: AppTest, text: str) -> None:
    app.chat_input[0].set_value(text).run()
    assert not app.exception, app.exception


def test_sign_in_chat_and_find_the_conversation(app: AppTest, client: httpx.Client) -> None:
    signed_in(app, client)
    assert "Signed in as **streamlit-user**" in [m.value for m in app.sidebar.markdown]
    ask(app, "Hello app")
    shown = [m.markdown[0].value for m in app.chat_message]
    assert shown == ["Hello app", REPLY]
    assert "▸ Hello app" in [b.label for b in app.sidebar.button]
    assert any("fake-model" in c.value and "first token" in c.value for c in app.caption)
    next(b for b in app.sidebar.button if b.label == "Sign out").click().run()
    assert app.session_state.token is None
    assert app.title[0].value == "ragstream"


def test_answers_show_their_numbered_sources(app: AppTest, client: httpx.Client) -> None:
    headers = signed_in(app, client)
    ingest(
        client,
        headers,
        {
            "id": "ice",
            "text": "Glaciers retreat as winters warm.",
            "metadata": {"title": "Ice report"},
        },
    )
    app.slider(key="rag_alpha").set_value(0.0).run()
    ask(app, "Why do glaciers retreat?")
    expanders = [e.label for e in app.expander]
    assert "Sources (1)" in expanders
    assert any(m.value.startswith("**[1] Ice report · score") for m in app.markdown)


def test_a_bad_filter_is_shown_next_to_the_editor(app: AppTest, client: httpx.Client) -> None:
    signed_in(app, client)
    app.text_area(key="f_json").input('{"year": {"$gt": "2010"}}').run()
    ask(app, "Anything")
    errors = [e.value for e in app.error]
    assert any("filter.year.$gt: expected a number" in e for e in errors)
    # Nothing was stored for the refused question.
    assert client.get("/conversations", headers=register(client)).json()["count"] == 0


def test_rows_of_the_filter_editor_become_a_filter(
    app: AppTest, client: httpx.Client, server: LiveServer
) -> None:
    headers = signed_in(app, client)
    ingest(
        client,
        headers,
        {"id": "a", "text": "Glaciers in 2010.", "metadata": {"year": 2010}},
        {"id": "b", "text": "Glaciers in 2020.", "metadata": {"year": 2020}},
    )
    app.slider(key="rag_alpha").set_value(0.0).run()
    app.text_input(key="f_field_0").input("year")
    app.selectbox(key="f_op_0").set_value("≥")
    app.text_input(key="f_value_0").input("2015").run()
    ask(app, "glaciers")
    system = server.components.models.default.chat.prompts[-1][0].text
    assert "Glaciers in 2020." in system
    assert "Glaciers in 2010." not in system


def test_feedback_and_regenerate(app: AppTest, client: httpx.Client) -> None:
    headers = signed_in(app, client)
    ask(app, "Rate this")
    app.button(
        key=next(b.key for b in app.button if b.key and b.key.startswith("up-"))
    ).click().run()
    conversation_id = client.get("/conversations", headers=headers).json()["data"][0]["id"]
    messages = client.get(f"/conversations/{conversation_id}", headers=headers).json()["messages"]
    assert messages[1]["feedback"]["rating"] == 1

    app.button(key="regenerate").click().run()
    assert not app.exception, app.exception
    detail = client.get(f"/conversations/{conversation_id}", headers=headers).json()
    assert [m["content"] for m in detail["messages"]] == ["Rate this", REPLY, "A second answer."]
    assert [m.markdown[0].value for m in app.chat_message][-1] == "A second answer."


def test_rename_and_delete_with_confirmation(app: AppTest, client: httpx.Client) -> None:
    headers = signed_in(app, client)
    ask(app, "Keep or delete")
    app.text_input(key="rename_title").input("Renamed")
    app.button(key="rename").click().run()
    assert client.get("/conversations", headers=headers).json()["data"][0]["title"] == "Renamed"
    assert app.button(key="delete").disabled  # not without the confirmation
    app.checkbox(key="confirm_delete").check().run()
    app.button(key="delete").click().run()
    assert client.get("/conversations", headers=headers).json()["count"] == 0


def test_an_expired_session_leads_back_to_sign_in(app: AppTest, client: httpx.Client) -> None:
    signed_in(app, client)
    app.session_state.token = "expired.token.value"
    app.run()
    assert not app.exception
    assert app.title[0].value == "ragstream"
    assert "session has expired" in app.warning[0].value


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


def test_documents_are_listed_and_deleted(app: AppTest, client: httpx.Client) -> None:
    headers = signed_in(app, client)
    ingest(
        client,
        headers,
        {
            "id": "handbook",
            "text": "Expenses are due in 30 days.",
            "metadata": {"title": "Handbook"},
        },
    )
    app.run()
    assert "Your documents (1)" in [s.value for s in app.subheader]
    assert any("**Handbook** · only you" in m.value for m in app.markdown)
    app.button(key="del-private-handbook").click().run()
    assert client.get("/documents", headers=headers).json()["count"] == 0
    assert "Your documents (0)" in [s.value for s in app.subheader]


def test_a_backend_that_goes_away_shows_a_banner_and_a_retry(
    app: AppTest, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in(app, client)
    monkeypatch.setenv("BACKEND_URL", "http://127.0.0.1:9")
    app.run()
    assert not app.exception
    assert "unreachable" in app.error[0].value
    assert "Retry" in [b.label for b in app.button]


# --- production dress ----------------------------------------------------------------------
def upload(app: AppTest, name: str, content: bytes, mime: str = "text/plain") -> None:
    app.file_uploader[0].upload(name, content, mime)
    next(b for b in app.button if b.label == "Upload").click().run()
    assert not app.exception, app.exception


@pytest.fixture
def small_uploads(serve: Serve, model: ChatModel) -> LiveServer:
    """A server that publishes for `publisher` and takes files up to 3 MiB."""
    return serve(model=model, publishers=["publisher"], max_upload_bytes=3 * 2**20 + 5)


def documents_tab(
    small_uploads: LiveServer, monkeypatch: pytest.MonkeyPatch, username: str
) -> AppTest:
    monkeypatch.setenv("BACKEND_URL", small_uploads.url)
    app = AppTest.from_file(APP, default_timeout=30)
    signed_in(app, small_uploads.http, username)
    return app


def test_uploads_are_told_in_words_with_plurals_right(
    small_uploads: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = documents_tab(small_uploads, monkeypatch, "writer")
    assert app.file_uploader[0].proto.max_upload_size_mb == 3  # the backend's limit, not 200
    upload(app, "notes.txt", b"Expenses are due in 30 days.")
    assert app.success[0].value == "notes.txt: added (1 passage)"
    assert "1 passage" in [c.value for c in app.caption]
    upload(app, "notes.txt", b"Expenses are due in 30 days.")
    assert app.success[0].value == "notes.txt: already there, unchanged (1 passage)"
    upload(app, "big.txt", b"x" * (3 * 2**20 + 6))  # past the backend's limit
    assert app.error[0].value == (
        "big.txt was not added: the file is larger than the 3 MB allowed (MAX_UPLOAD_BYTES)"
    )
    upload(app, "empty.txt", b"   ")
    assert app.error[0].value == "empty.txt was not added: 'empty.txt' holds no text"


def test_only_publishers_are_offered_everyone(
    small_uploads: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = documents_tab(small_uploads, monkeypatch, "reader")
    assert not [r for r in app.radio if r.label == "Visible to"]
    app = documents_tab(small_uploads, monkeypatch, "publisher")
    visible = next(r for r in app.radio if r.label == "Visible to")
    visible.set_value("shared")
    upload(app, "memo.txt", b"The office closes at six.")
    assert any("**memo.txt** · everyone" in m.value for m in app.markdown)


def test_the_app_config_is_dressed_for_production() -> None:
    config = tomllib.loads((Path(APP).parents[1] / ".streamlit" / "config.toml").read_text())
    assert (
        config["server"]["maxUploadSize"] * 2**20
        == Settings.model_fields["max_upload_bytes"].default
    )  # the backend's default limit
    assert config["client"]["toolbarMode"] == "minimal"  # no "Deploy"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["headless"] is True


def test_a_proxy_page_becomes_words() -> None:
    html = httpx.Response(413, text="<html><body><h1>413 Request Entity Too Large</h1></html>")
    error = BackendError.of(html)
    assert "<" not in error.message
    assert error.message.startswith("the request is larger than the server")
    assert error.status == 413


@pytest.mark.parametrize("model", [fake_model(["one two three four five " * 8], sleep=0.01)])
def test_an_answer_left_mid_stream_is_resumed_on_the_next_run(
    app: AppTest, client: httpx.Client
) -> None:
    headers = signed_in(app, client)
    body = {"message": "Tell me", "on_disconnect": "finish"}  # what the app itself asks
    with connect_sse(client, "POST", "/chat/stream", json=body, headers=headers) as source:
        for sse in source.iter_sse():
            if sse.event == "token":
                break  # a rerun, a closed tab, a proxy's cut
    conversation = client.get("/conversations", headers=headers).json()["data"][0]
    app.session_state.conversation_id = conversation["id"]
    app.run()
    assert not app.exception, app.exception
    detail = client.get(f"/conversations/{conversation['id']}", headers=headers).json()
    assert detail["messages"][1]["status"] == "complete"
    shown = [m.markdown[0].value for m in app.chat_message if m.markdown]
    assert ("one two three four five " * 8).strip() in "".join(shown)


def _answer_ids(client: httpx.Client, headers: dict[str, str]) -> tuple[str, list[dict]]:
    conversation_id = client.get("/conversations", headers=headers).json()["data"][0]["id"]
    detail = client.get(f"/conversations/{conversation_id}", headers=headers).json()
    return conversation_id, detail["messages"]


def test_revise_an_answer_and_walk_its_versions(app: AppTest, client: httpx.Client) -> None:
    headers = signed_in(app, client)
    ask(app, "Tell me about glaciers")
    _, messages = _answer_ids(client, headers)
    first_answer = messages[1]["id"]
    assert "✎ Revise this answer" in [e.label for e in app.expander]
    app.button(key=f"ask-Shorter-{first_answer}").click().run()
    assert not app.exception, app.exception
    _, messages = _answer_ids(client, headers)
    revision = messages[2]
    assert (revision["revision_of"], revision["revision_feedback"]) == (first_answer, "Shorter")
    assert revision["parent_id"] == messages[0]["id"]
    assert [m.markdown[0].value for m in app.chat_message][-1] == "A second answer."
    captions = [c.value for c in app.caption]
    assert "2 / 2" in captions
    assert "Revised: Shorter" in captions

    # Free text on the revision, then back to the first version with ‹.
    app.text_input(key=f"feedback-{revision['id']}").input("say which year")
    app.button(key=f"revise-{revision['id']}").click().run()
    _, messages = _answer_ids(client, headers)
    assert messages[-1]["revision_feedback"] == "say which year"
    assert "3 / 3" in [c.value for c in app.caption]
    app.button(key=f"branch--1-{messages[-1]['id']}").click().run()
    app.button(key=f"branch--1-{revision['id']}").click().run()
    assert not app.exception, app.exception
    assert [m.markdown[0].value for m in app.chat_message] == ["Tell me about glaciers", REPLY]
    assert "1 / 3" in [c.value for c in app.caption]


def test_edit_a_question_into_a_new_branch(app: AppTest, client: httpx.Client) -> None:
    headers = signed_in(app, client)
    ask(app, "First question")
    _, messages = _answer_ids(client, headers)
    question = messages[0]["id"]
    app.text_area(key=f"edit-{question}").input("First question, edited")
    app.button(key=f"send-edit-{question}").click().run()
    assert not app.exception, app.exception
    _, messages = _answer_ids(client, headers)
    asked = [m["content"] for m in messages if m["role"] == "user"]
    assert asked == ["First question", "First question, edited"]
    shown = [m.markdown[0].value for m in app.chat_message]
    assert shown[0] == "First question, edited"
    assert "2 / 2" in [c.value for c in app.caption]


def test_a_follow_up_shows_what_it_searched_for(app: AppTest, client: httpx.Client) -> None:
    headers = signed_in(app, client)
    ingest(client, headers, {"id": "m", "text": "Metformin treats type 2 diabetes."})
    ask(app, "What is metformin used for?")
    assert not any(c.value.startswith("Searched for") for c in app.caption)
    ask(app, "Does it lower the risk of cancer?")
    expected = "Searched for: What is metformin used for? … Does it lower the risk of cancer?"
    assert expected in [c.value for c in app.caption]


def test_admins_download_the_feedback_export(
    app: AppTest,
    client: httpx.Client,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed_in(app, client, "reader")
    assert "Feedback export (admin)" not in [e.label for e in app.sidebar.expander]
    ask(app, "Hello app")
    answer_id = next(
        m["id"] for m in app.session_state.client.conversation(app.session_state.conversation_id)[
            "messages"
        ] if m["role"] == "assistant"
    )  # fmt: skip
    app.session_state.client.feedback(answer_id, -1, "wrong")
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    assert cli(["users", "add", "reader", "--admin"]) == 0
    app.run()
    assert "Feedback export (admin)" in [e.label for e in app.sidebar.expander]
    app.button(key="feedback-export").click().run()
    assert not app.exception, app.exception
    records = [json.loads(line) for line in app.session_state.feedback_export.splitlines()]
    assert {(r["type"], r["comment"]) for r in records} == {("rating", "wrong"), ("case", "wrong")}
    assert "2 records" in [c.value for c in app.caption]
