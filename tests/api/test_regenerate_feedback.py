"""Regenerating an answer (a sibling branch) and rating answers."""

from __future__ import annotations

import httpx
import pytest
from httpx_sse import connect_sse

from tests.helpers import LiveServer, StreamResult, fake_model, register, stream_chat


def regenerate(
    client: httpx.Client, headers: dict, conversation_id: str, **body: object
) -> StreamResult:
    events = []
    with connect_sse(
        client,
        "POST",
        f"/conversations/{conversation_id}/regenerate",
        json=body or None,
        headers=headers,
    ) as source:
        source.response.raise_for_status()
        events = [(e.event, e.json()) for e in source.iter_sse()]
    return StreamResult(events)


@pytest.mark.parametrize("model", [fake_model(["First.", "Second.", "Third.", "Fourth."])])
def test_regenerate_answers_the_last_question_again_as_a_sibling(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    first = stream_chat(client, headers, message="Question one")
    conversation_id = first.first("meta")["conversation_id"]
    question_id = first.first("meta")["user_message_id"]

    again = regenerate(client, headers, conversation_id, retrieval={"enabled": False})
    assert again.names()[0] == "meta"
    assert again.names()[-1] == "done"
    assert again.first("meta")["user_message_id"] == question_id
    assert again.text() == "Second."
    # The model saw the same question with the same (empty) history.
    prompt = server.components.models.default.chat.prompts[-1]
    assert [m.text for m in prompt][1:] == ["Question one"]

    detail = client.get(f"/conversations/{conversation_id}", headers=headers).json()
    contents = [(m["role"], m["content"], m["parent_id"]) for m in detail["messages"]]
    assert contents == [
        ("user", "Question one", None),
        ("assistant", "First.", question_id),
        ("assistant", "Second.", question_id),
    ]
    assert detail["active_branch"] == [question_id, again.first("meta")["assistant_message_id"]]

    # The next question follows the regenerated answer, not the first one.
    follow = stream_chat(client, headers, message="Question two", conversation_id=conversation_id)
    prompt = server.components.models.default.chat.prompts[-1]
    assert [m.text for m in prompt][1:] == ["Question one", "Second.", "Question two"]
    assert follow.text() == "Third."


def test_regenerate_needs_a_question_and_an_owner(client: httpx.Client) -> None:
    owner, other = register(client), register(client)
    empty = client.post("/conversations", json={}, headers=owner).json()
    response = client.post(f"/conversations/{empty['id']}/regenerate", headers=owner)
    assert response.status_code == 422
    assert "no question" in response.json()["detail"][0]["msg"]
    conversation_id = stream_chat(client, owner, message="mine").first("meta")["conversation_id"]
    assert (
        client.post(f"/conversations/{conversation_id}/regenerate", headers=other).status_code
        == 404
    )


def test_feedback_is_stored_with_the_answer_and_can_be_changed(client: httpx.Client) -> None:
    headers = register(client)
    result = stream_chat(client, headers, message="Rate me")
    meta = result.first("meta")
    url = f"/messages/{meta['assistant_message_id']}/feedback"
    first = client.post(url, json={"rating": 1, "comment": "helpful"}, headers=headers)
    assert first.status_code == 201
    assert first.json()["rating"] == 1
    client.post(url, json={"rating": -1, "comment": "on second thought, wrong"}, headers=headers)
    messages = client.get(f"/conversations/{meta['conversation_id']}", headers=headers).json()[
        "messages"
    ]
    assert messages[1]["feedback"]["rating"] == -1
    assert messages[1]["feedback"]["comment"] == "on second thought, wrong"
    assert messages[0]["feedback"] is None


def test_bad_feedback_is_refused(client: httpx.Client) -> None:
    owner, other = register(client), register(client)
    meta = stream_chat(client, owner, message="x").first("meta")
    answer = f"/messages/{meta['assistant_message_id']}/feedback"
    assert client.post(answer, json={"rating": 5}, headers=owner).status_code == 422
    assert client.post(answer, json={"rating": 1}, headers=other).status_code == 404
    question = client.post(
        f"/messages/{meta['user_message_id']}/feedback", json={"rating": 1}, headers=owner
    )
    assert question.status_code == 422
    assert "only answers" in question.json()["detail"][0]["msg"]
    assert (
        client.post("/messages/nope/feedback", json={"rating": 1}, headers=owner).status_code == 404
    )
