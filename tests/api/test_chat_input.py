"""Bad chat requests get a 4xx naming what is wrong, and store nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import register


@pytest.mark.parametrize("route", ["/chat", "/chat/stream"])
@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"message": ""}, ["body", "message"], "must not be empty"),
        ({"message": "   \n"}, ["body", "message"], "must not be empty"),
        ({}, ["body", "message"], "Field required"),
        ({"message": "x" * 16_001}, ["body", "message"], "limit is 16000"),
        ({"message": "hi", "max_tokens": 0}, ["body", "max_tokens"], "greater than or equal to 1"),
        ({"message": "hi", "max_tokens": 5000}, ["body", "max_tokens"], "at most 2048"),
        ({"message": "hi", "temperature": 3}, ["body", "temperature"], "less than or equal to 2"),
        ({"message": "hi", "model": "gpt-17"}, ["body", "model"], "unknown model 'gpt-17'"),
        ({"message": "hi", "unexpected": 1}, ["body", "unexpected"], "Extra inputs"),
        (
            {"message": "hi", "retrieval": {"filter": {"year": {"$gt": "x"}}}},
            ["body", "retrieval", "filter"],
            "filter.year.$gt: expected a number",
        ),
    ],
)
def test_bad_chat_requests_are_422_and_store_nothing(
    client: httpx.Client, route: str, body: dict, loc: list[str], words: str
) -> None:
    headers = register(client)
    response = client.post(route, json=body, headers=headers)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    assert words in detail["msg"]
    assert client.get("/conversations", headers=headers).json()["count"] == 0


def test_a_message_that_cannot_fit_the_context_window_is_refused_before_storing(
    client: httpx.Client,
) -> None:
    headers = register(client)
    # 15,000 characters is ~3,750 tokens; with 512 kept for the answer the 4,096 window is full.
    response = client.post("/chat/stream", json={"message": "y" * 15_000}, headers=headers)
    assert response.status_code == 422
    assert "too long" in response.json()["detail"][0]["msg"]
    assert client.get("/conversations", headers=headers).json()["count"] == 0


def test_an_unknown_conversation_is_a_404(client: httpx.Client) -> None:
    headers = register(client)
    response = client.post(
        "/chat/stream", json={"message": "hi", "conversation_id": "nope"}, headers=headers
    )
    assert response.status_code == 404
    assert response.json()["detail"] == "conversation not found"


def test_a_body_that_is_not_json_is_a_422(client: httpx.Client) -> None:
    headers = {**register(client), "Content-Type": "application/json"}
    response = client.post("/chat/stream", content=b"{not json", headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
