"""Conversations: CRUD on SQLite and PostgreSQL, and no user ever reaches another's."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import Serve, register, stream_chat


@pytest.fixture
def api(serve: Serve, database_url: str) -> httpx.Client:
    """A client of a live server on each database (SQLite, PostgreSQL)."""
    return serve(database_url=database_url).http


def test_create_list_get_rename_delete(api: httpx.Client) -> None:
    headers = register(api)
    first = api.post("/conversations", json={"title": "Trip plans"}, headers=headers)
    assert first.status_code == 201
    second = api.post("/conversations", json={}, headers=headers).json()
    assert second["title"] == "New conversation"

    listing = api.get("/conversations", headers=headers).json()
    assert listing["count"] == 2
    assert [c["id"] for c in listing["data"]] == [second["id"], first.json()["id"]]  # newest first
    page = api.get("/conversations", params={"limit": 1, "offset": 1}, headers=headers).json()
    assert [c["id"] for c in page["data"]] == [first.json()["id"]]
    assert page["count"] == 2

    renamed = api.patch(
        f"/conversations/{second['id']}", json={"title": "  Groceries "}, headers=headers
    )
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Groceries"
    detail = api.get(f"/conversations/{second['id']}", headers=headers).json()
    assert detail["title"] == "Groceries"
    assert detail["messages"] == []

    assert api.delete(f"/conversations/{second['id']}", headers=headers).status_code == 204
    assert api.get(f"/conversations/{second['id']}", headers=headers).status_code == 404
    assert api.get("/conversations", headers=headers).json()["count"] == 1


def test_chatting_moves_a_conversation_to_the_top_and_delete_removes_its_messages(
    api: httpx.Client,
) -> None:
    headers = register(api)
    older = stream_chat(api, headers, message="first topic").first("meta")["conversation_id"]
    newer = stream_chat(api, headers, message="second topic").first("meta")["conversation_id"]
    stream_chat(api, headers, message="back to the first", conversation_id=older)
    order = [c["id"] for c in api.get("/conversations", headers=headers).json()["data"]]
    assert order == [older, newer]
    assert len(api.get(f"/conversations/{older}", headers=headers).json()["messages"]) == 4

    assert api.delete(f"/conversations/{older}", headers=headers).status_code == 204
    again = api.post("/chat", json={"message": "hi", "conversation_id": older}, headers=headers)
    assert again.status_code == 404


def test_another_users_conversation_is_a_404_on_every_route(api: httpx.Client) -> None:
    owner = register(api)
    intruder = register(api)
    conversation_id = stream_chat(api, owner, message="secret plans").first("meta")[
        "conversation_id"
    ]

    assert api.get("/conversations", headers=intruder).json() == {"data": [], "count": 0}
    attempts = [
        api.get(f"/conversations/{conversation_id}", headers=intruder),
        api.patch(f"/conversations/{conversation_id}", json={"title": "mine"}, headers=intruder),
        api.delete(f"/conversations/{conversation_id}", headers=intruder),
        api.post(
            "/chat", json={"message": "hi", "conversation_id": conversation_id}, headers=intruder
        ),
        api.post(
            "/chat/stream",
            json={"message": "hi", "conversation_id": conversation_id},
            headers=intruder,
        ),
    ]
    for response in attempts:
        assert response.status_code == 404, response.request.url
        assert "secret plans" not in response.text
        assert response.json()["detail"] in (
            "conversation not found",
            [
                {
                    "loc": ["body", "conversation_id"],
                    "msg": "conversation not found",
                    "type": "value_error",
                }
            ],
        )

    # Nothing the intruder did changed or added anything.
    detail = api.get(f"/conversations/{conversation_id}", headers=owner).json()
    assert detail["title"] == "secret plans"
    assert detail["messages"][0]["content"] == "secret plans"
    assert len(detail["messages"]) == 2


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "/conversations/no-such-id", None),
        ("PATCH", "/conversations/no-such-id", {"title": "x"}),
        ("DELETE", "/conversations/no-such-id", None),
    ],
)
def test_unknown_conversations_are_404(
    api: httpx.Client, method: str, url: str, body: dict | None
) -> None:
    response = api.request(method, url, json=body, headers=register(api))
    assert response.status_code == 404
    assert response.json() == {"detail": "conversation not found"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({}, "title"),
    ],
)
def test_bad_renames_are_422(api: httpx.Client, body: dict, field: str) -> None:
    headers = register(api)
    conversation = api.post("/conversations", json={"title": "keep me"}, headers=headers).json()
    response = api.patch(f"/conversations/{conversation['id']}", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert (
        api.get(f"/conversations/{conversation['id']}", headers=headers).json()["title"]
        == "keep me"
    )
